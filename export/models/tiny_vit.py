"""TinyViT image encoder as used by LiteMedSAM (and MobileSAM).

Stage 0 is convolutional (MBConv blocks); later stages are windowed-attention blocks with a learned bias per
(|dy|, |dx|) offset inside the window, a depthwise "local" convolution between attention and MLP, and a patch
merging step between stages. Between stages tensors are B x C x H x W; inside attention stages tokens are
B x H x W x C.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import sam_neck


class Conv2dBN(nn.Sequential):
    """Convolution without bias followed by BatchNorm (keys `c` and `bn`)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Stem: conv-BN, GELU, conv-BN. LiteMedSAM uses 1x1 stride-1 convolutions, MobileSAM 3x3 stride-2."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, embed_dim // 2, kernel_size, stride, pad),
            nn.GELU(),
            Conv2dBN(embed_dim // 2, embed_dim, kernel_size, stride, pad),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU after the sum."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, dim)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Between stages: 1x1 conv, GELU, 3x3 depthwise conv (stride 1 or 2), GELU, 1x1 conv. B x C x H x W in/out."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def window_offset_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into the bias table: |dy| * window + |dx| for every pair of window positions."""
    coords = torch.arange(window)
    rows = coords.repeat_interleave(window)
    cols = coords.repeat(window)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window + dx


class WindowAttention(nn.Module):
    """Attention inside one window of window x window tokens, with its own input LayerNorm.

    The qkv projection is laid out per head as [q | k | v] (head-major), unlike SAM's ViT.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", window_offset_index(window), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded windows; padding is normalised with the tokens), local conv, MLP.

    Input and output: B x H x W x C.
    """

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        window = self.window
        if height == window and width == window:
            attended = self.attn(x.reshape(batch, height * width, channels)).view(batch, height, width, channels)
        else:
            pad_h = (window - height % window) % window
            pad_w = (window - width % window) % window
            padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else x
            n_h, n_w = (height + pad_h) // window, (width + pad_w) // window
            windows = padded.view(batch, n_h, window, n_w, window, channels).transpose(2, 3)
            windows = windows.reshape(batch * n_h * n_w, window * window, channels)
            attended = self.attn(windows).view(batch, n_h, n_w, window, window, channels).transpose(2, 3)
            attended = attended.reshape(batch, n_h * window, n_w * window, channels)[:, :height, :width]
        x = x + attended
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class TinyMlp(nn.Module):
    """LayerNorm, fc1, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class ConvStage(nn.Module):
    """Stage of MBConv blocks, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class AttentionStage(nn.Module):
    """Stage of TinyViT blocks on B x C x H x W input, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return self.downsample(x) if self.downsample is not None else x


class TinyViT(nn.Module):
    """TinyViT encoder with SAM's neck: B x 3 x S x S image -> B x neck_out x S/r x S/r embedding.

    Args:
        img_size: input side S (the network is convolutional up to the windows; S fixes the embedding grid).
        in_chans: image channels.
        embed_dims: width of each stage.
        depths: blocks per stage (stage 0 is convolutional).
        num_heads: heads of each attention stage (entry 0 unused).
        window_sizes: window side of each attention stage (entry 0 unused).
        mlp_ratio: MLP hidden width / dim.
        mbconv_expand_ratio: MBConv expansion.
        local_conv_size: kernel of the depthwise conv between attention and MLP.
        stem_kernel, stem_stride: kernel and stride of both stem convolutions (LiteMedSAM: 1, 1).
        merge_strides: stride of the patch merging after each stage but the last (LiteMedSAM/MobileSAM: 2, 2, 1).
        neck_out: embedding channels.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        stem_kernel: int = 1,
        stem_stride: int = 1,
        merge_strides: Sequence[int] = (2, 2, 1),
        neck_out: int = 256,
    ) -> None:
        super().__init__()
        stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == stages) or len(merge_strides) != stages - 1:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage, merge_strides one fewer")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], stem_kernel, stem_stride)
        self.layers = nn.ModuleList()
        for i in range(stages):
            merge = PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i]) if i < stages - 1 else None
            if i == 0:
                stage: nn.Module = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge)
            else:
                stage = AttentionStage(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio, local_conv_size, merge)
            self.layers.append(stage)
        self.neck = sam_neck(embed_dims[-1], neck_out)
        side = img_size
        for _ in range(2):
            side = (side + 2 * (stem_kernel // 2) - stem_kernel) // stem_stride + 1
        for stride in merge_strides:
            side = (side - 1) // stride + 1
        self._embedding_side = side

    @property
    def embedding_size(self) -> tuple[int, int]:
        return self._embedding_side, self._embedding_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tail(self.forward_head(x, len(self.layers)), len(self.layers))

    def forward_head(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """The stem and stages 0..split-1: B x 3 x S x S image -> B x C x h x w features (the input of stage `split`)."""
        x = self.patch_embed(x)
        for layer in self.layers[:split]:
            x = layer(x)
        return x

    def forward_tail(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """Stages split.. and the neck on `forward_head`'s features: the embedding."""
        for layer in self.layers[split:]:
            x = layer(x)
        return self.neck(x)

    def tail_modules(self, split: int) -> list[nn.Module]:
        """The modules `forward_tail(x, split)` runs (what partial encoder training trains)."""
        return [*self.layers[split:], self.neck]
