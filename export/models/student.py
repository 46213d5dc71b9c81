"""Student image encoder: LiteMedSAM's TinyViT run on a half-resolution grid, with an upsampling neck.

LiteMedSAM's encoder keeps its first stage at full input resolution (256 x 256 tokens) and its last two stages
on the 64 x 64 embedding grid: 74.9 GFLOP, spread evenly over the stages. The student halves every stage's
resolution (a 2 x 2 stride-2 stem), so the attention stages run on 32 x 32 tokens, keeps fewer attention blocks,
and brings the result back to the decoder's 64 x 64 grid with a 2x upsampling plus a skip from the 64 x 64
features of stage 1 (an FPN-style merge). Input, output and preprocessing are the teacher's, so the same prompt
encoder and mask decoder (and every runtime contract) serve both:

    image 3x256x256 -> stem (2x2 s2, 1x1) -> 64x128x128 -> MBConv x d0 -> merge s2 -> 128x64x64
      -> attention x d1 ------------------------------------------------+ (128x64x64)
      -> merge s2 -> 160x32x32 -> attention x d2 -> merge s1 -> 320x32x32  |
      -> attention x d3 -> neck (1x1, LN, 3x3, LN) -> 256x32x32 -> up 2x -> (+) <- 1x1 conv (zero at init)
      -> embedding 256x64x64

Every part except the skip projection has a teacher counterpart of the same shape (`init_from_teacher`), so
distillation starts from LiteMedSAM's weights rather than from noise.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import sam_neck
from .tiny_vit import AttentionStage, Conv2dBN, ConvStage, PatchMerging, TinyViT, window_offset_index


class StudentEncoder(nn.Module):
    """Half-resolution TinyViT with an upsampling neck: B x 3 x S x S -> B x neck_out x S/4 x S/4.

    Args:
        img_size: input side S (the embedding grid is S/4, as LiteMedSAM's).
        in_chans: image channels.
        embed_dims: width of each of the four stages.
        depths: blocks per stage (stage 0 convolutional).
        num_heads: heads of each attention stage (entry 0 unused).
        window_sizes: window side of each attention stage (entry 0 unused).
        mlp_ratio, mbconv_expand_ratio, local_conv_size: as TinyViT's.
        neck_out: embedding channels.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 3, 1),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 8, 16, 8),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        neck_out: int = 256,
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == 4):
            raise ValueError("the student has four stages: embed_dims, depths, num_heads and window_sizes need four entries")
        if img_size % 8:
            raise ValueError(f"img_size {img_size} must be a multiple of 8")
        self.img_size = img_size
        dims = list(embed_dims)
        self.stem = nn.Sequential(Conv2dBN(in_chans, dims[0] // 2, 2, 2), nn.GELU(), Conv2dBN(dims[0] // 2, dims[0]))
        self.stage0 = ConvStage(dims[0], depths[0], mbconv_expand_ratio, PatchMerging(dims[0], dims[1], 2))
        self.stage1 = AttentionStage(dims[1], depths[1], num_heads[1], window_sizes[1], mlp_ratio, local_conv_size, None)
        self.merge1 = PatchMerging(dims[1], dims[2], 2)
        self.stage2 = AttentionStage(dims[2], depths[2], num_heads[2], window_sizes[2], mlp_ratio, local_conv_size, PatchMerging(dims[2], dims[3], 1))
        self.stage3 = AttentionStage(dims[3], depths[3], num_heads[3], window_sizes[3], mlp_ratio, local_conv_size, None)
        self.neck = sam_neck(dims[3], neck_out)
        self.skip = nn.Conv2d(dims[1], neck_out, kernel_size=1)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    @property
    def embedding_size(self) -> tuple[int, int]:
        return self.img_size // 4, self.img_size // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.stage1(self.stage0(self.stem(x)))  # B x dims[1] x S/4 x S/4
        coarse = self.stage3(self.stage2(self.merge1(fine)))  # B x dims[3] x S/8 x S/8
        up = F.interpolate(self.neck(coarse), scale_factor=2.0, mode="bilinear", align_corners=False)
        return up + self.skip(fine)


def _resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """heads x w0^2 bias table (indexed |dy| * w0 + |dx|) resampled to heads x window^2."""
    old = int(round(table.shape[1] ** 0.5))
    if old == window:
        return table.clone()
    grid = table.reshape(table.shape[0], 1, old, old)
    resized = F.interpolate(grid, size=(window, window), mode="bicubic", align_corners=True)
    return resized.reshape(table.shape[0], window * window)


def _copy_stage(student: AttentionStage, teacher: AttentionStage, blocks: Sequence[int]) -> None:
    for target, index in zip(student.blocks, blocks):
        source = teacher.blocks[index]
        state = {k: v for k, v in source.state_dict().items() if not k.endswith("attention_biases")}
        target.load_state_dict(state, strict=False)
        target.attn.attention_biases.data.copy_(_resize_bias_table(source.attn.attention_biases.data, target.window))
        target.attn.attention_bias_idxs = window_offset_index(target.window).to(target.attn.attention_bias_idxs.device)


def spread(count: int, total: int) -> list[int]:
    """`count` block indices spread evenly over `total` teacher blocks, always keeping the last."""
    if count > total:
        raise ValueError(f"cannot take {count} of {total} teacher blocks")
    return [round((k + 1) * total / count) - 1 for k in range(count)]


@torch.no_grad()
def init_from_teacher(student: StudentEncoder, teacher: TinyViT) -> StudentEncoder:
    """Copy a LiteMedSAM TinyViT's weights into the student (same widths required).

    The stride-2 2 x 2 stem starts as 2 x 2 average pooling followed by the teacher's 1 x 1 stem; each attention
    stage takes evenly spaced teacher blocks (`spread`), their bias tables resampled to the student's windows; the
    skip projection stays zero, so at initialisation the student is the teacher run at half resolution and
    upsampled.
    """
    stem0, stem2 = teacher.patch_embed.seq[0], teacher.patch_embed.seq[2]
    if stem0.c.weight.shape[-1] != 1:
        raise ValueError("init_from_teacher expects LiteMedSAM's 1 x 1 stem")
    student.stem[0].c.weight.copy_(stem0.c.weight.expand(-1, -1, 2, 2) / 4.0)
    student.stem[0].bn.load_state_dict(stem0.bn.state_dict())
    student.stem[2].load_state_dict(stem2.state_dict())
    t0, t1, t2, t3 = teacher.layers
    for target, source in zip(student.stage0.blocks, [t0.blocks[i] for i in spread(len(student.stage0.blocks), len(t0.blocks))]):
        target.load_state_dict(source.state_dict())
    student.stage0.downsample.load_state_dict(t0.downsample.state_dict())
    _copy_stage(student.stage1, t1, spread(len(student.stage1.blocks), len(t1.blocks)))
    student.merge1.load_state_dict(t1.downsample.state_dict())
    _copy_stage(student.stage2, t2, spread(len(student.stage2.blocks), len(t2.blocks)))
    student.stage2.downsample.load_state_dict(t2.downsample.state_dict())
    _copy_stage(student.stage3, t3, spread(len(student.stage3.blocks), len(t3.blocks)))
    student.neck.load_state_dict(teacher.neck.state_dict())
    return student
