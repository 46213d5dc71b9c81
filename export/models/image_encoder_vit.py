"""ViT image encoder of SAM, with SAM-Med2D's parallel adapters as an option.

Token layout inside the encoder is B x H x W x C (channels last). Blocks use either windowed attention (the
token grid is zero-padded to a multiple of the window) or global attention, with MViTv2-style decomposed
relative-position terms added to the attention logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sammed_edge.kernels.triton import relpos_attention, relpos_attention_supported

from .common import MLPBlock, activation, sam_neck


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, C) table; linearly resized when L != 2 * max(q_size, k_size) - 1.

    Returns:
        q_size x k_size x C tensor.
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        resized = F.interpolate(rel_pos.t()[None], size=length, mode="linear")
        rel_pos = resized[0].t()
    q_coords = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias from decomposed relative positions.

    Args:
        q: (B, q_h * q_w, C) unscaled queries.
        rel_pos_h, rel_pos_w: relative-position tables of the height and width axes.
        q_size, k_size: (h, w) grids of queries and keys.

    Returns:
        (B, q_h * q_w, k_h * k_w) bias: a height term per (query, key row) plus a width term per (query, key column).
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h)
    table_w = relative_position_table(q_w, k_w, rel_pos_w)
    batch, _, dim = q.shape
    grid_q = q.reshape(batch, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(batch, q_h * q_w, k_h * k_w)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split B x H x W x C tokens into (B * nW) x window x window x C, zero-padding H and W up to multiples."""
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels), (padded_h, padded_w)


def window_unpartition(windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: back to B x H x W x C, padding removed."""
    padded_h, padded_w = padded_hw
    height, width = hw
    batch = windows.shape[0] // ((padded_h // window) * (padded_w // window))
    x = windows.view(batch, padded_h // window, padded_w // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


class Attention(nn.Module):
    """Multi-head self-attention over a token grid, with optional decomposed relative positions.

    Args:
        dim: token width.
        num_heads: attention heads (head dim = dim / num_heads).
        qkv_bias: bias on the fused qkv projection.
        use_rel_pos: add relative-position terms.
        input_size: (h, w) grid the relative-position tables are sized for.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rel_pos: bool = False, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative positions need the attention grid size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        elif relpos_attention_supported(q, k, v):
            out = self._fused_rel_pos_attention(q, k, v, (height, width))
        else:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out)

    def _fused_rel_pos_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """The same attention through the Triton kernel: only the per-axis terms of `decomposed_rel_pos_bias` are
        formed ((S, N, h) and (S, N, w)); the kernel adds them to the logits tile by tile."""
        height, width = grid
        table_h = relative_position_table(height, height, self.rel_pos_h).to(q.dtype)
        table_w = relative_position_table(width, width, self.rel_pos_w).to(q.dtype)
        grid_q = q.reshape(q.shape[0], height, width, q.shape[-1])
        rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h).reshape(q.shape[0], height * width, height)
        rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w).reshape(q.shape[0], height * width, width)
        return relpos_attention(q, k, v, rel_h, rel_w)


class Adapter(nn.Module):
    """SAM-Med2D's adapter: a channel gate, a stride-2 conv / transposed-conv branch on the gated map, and a skip
    connection that adds the branch to the adapter's input (not to the gated map; checked against the official
    outputs), then a LayerNorm.

    Input and output are B x H x W x C with even H and W. Runs in parallel with the block's MLP.

    Args:
        dim: token width C.
        hidden: width of the channel gate's bottleneck (SAM-Med2D: C / 4).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)  # PyTorch's default eps (1e-5), unlike the encoder's 1e-6
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        gate = self.channel(x.mean(dim=(2, 3)))
        out = x + self.spatial(x * gate[:, :, None, None])
        return self.norm(out.permute(0, 2, 3, 1))


class Block(nn.Module):
    """Transformer block: attention (windowed when window_size > 0), then MLP (+ adapter in parallel)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        norm_eps: float,
        act: type[nn.Module],
        use_rel_pos: bool,
        window_size: int,
        input_size: tuple[int, int],
        adapter_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos, input_size=attn_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act)
        self.window_size = window_size
        if adapter_hidden:
            if input_size[0] % 2 or input_size[1] % 2:
                raise ValueError(f"adapters need an even token grid, got {input_size}")
            self.Adapter = Adapter(dim, adapter_hidden)  # attribute name is part of the checkpoint keys
        else:
            self.Adapter = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            windows, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(windows), self.window_size, padded_hw, (height, width))
        else:
            x = self.attn(x)
        x = shortcut + x
        normed = self.norm2(x)
        x = x + self.mlp(normed)
        if self.Adapter is not None:
            x = x + self.Adapter(normed)
        return x


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: B x C x H x W image -> B x H/p x W/p x D tokens."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT image encoder: B x 3 x S x S image -> B x out_chans x S/p x S/p embedding.

    Args:
        img_size: input side S.
        patch_size: patch side p.
        in_chans: image channels.
        embed_dim: token width.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width / embed_dim.
        out_chans: embedding channels after the neck.
        qkv_bias: bias on qkv projections.
        norm_eps: LayerNorm eps of blocks.
        act: activation name of the MLPs.
        use_abs_pos: learned absolute position embedding.
        use_rel_pos: decomposed relative positions in attention.
        window_size: window side of windowed blocks (0: all global).
        global_attn_indexes: blocks with global attention.
        adapter_hidden: bottleneck width of SAM-Med2D adapters; None for no adapters.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        act: str = "GELU",
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
        adapter_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim)) if use_abs_pos else None
        act_cls = activation(act)
        globals_ = set(global_attn_indexes)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps, act_cls, use_rel_pos,
                window_size=0 if i in globals_ else window_size, input_size=(grid, grid), adapter_hidden=adapter_hidden,
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    @property
    def embedding_size(self) -> tuple[int, int]:
        grid = self.img_size // self.patch_embed.proj.kernel_size[0]
        return grid, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
