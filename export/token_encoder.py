"""The TinyViT image encoder written for OpenVINO's CPU plugin: same contract and outputs, fewer data moves.

OpenVINO runs convolutions channels-last (its `acdb` layout) and picks every other layer's layout from its
inputs. The model's own forward keeps attention stages as B x H x W x C tensors and switches to B x C x H x W
around each local convolution; OpenVINO then carries the convolutions' channels-last layout into the 4-d
token tensors, so every switch became a real transpose (63 generic Transposes, ~14 % of the int8 encoder's
time, docs/benchmarks.md), plus reorders between them. This form changes only how the same arithmetic is
written:

- attention stages keep tokens as B x L x C (3-d, where OpenVINO keeps the plain layout);
- each switch to a convolution is `transpose(1, 2).reshape(B, C, H, W)` right before it, and each switch back is
  `permute(0, 2, 3, 1).reshape(B, L, C)` right after it: OpenVINO folds both into its own layout change, so no
  data moves;
- the qkv projection (laid out per head as [q | k | v]) becomes three Linear layers whose rows are gathered from
  it, so no split copies the projected tokens, and q, k, v reach the attention as plain head transposes that
  OpenVINO's attention kernel absorbs.

Exact algebra: `graphs.verify_encoder` checks the exported graph against the model's PyTorch forward at fp32
tolerance. Encoders without TinyViT attention stages (SAM-Med2D's ViT) have no such form.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .models.sam import SamModel
from .models.tiny_vit import AttentionStage, TinyViTBlock, WindowAttention


def _gather_rows(linear: nn.Linear, heads: int, part: int) -> nn.Linear:
    """Rows of a per-head [q | k | v] projection (3 x dim outputs) for one part (0 q, 1 k, 2 v) as a Linear."""
    width = linear.weight.shape[0] // (3 * heads)
    rows = torch.arange(linear.weight.shape[0]).view(heads, 3, width)[:, part].reshape(-1)
    out = nn.Linear(linear.in_features, heads * width)
    out.weight = nn.Parameter(linear.weight.detach()[rows].clone())
    out.bias = nn.Parameter(linear.bias.detach()[rows].clone())
    return out


class TokenWindowAttention(nn.Module):
    """`WindowAttention` with q, k and v as separate projections: windows x T x C -> windows x T x C."""

    def __init__(self, attn: WindowAttention) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attn.num_heads, attn.head_dim
        self.norm, self.proj = attn.norm, attn.proj
        self.q, self.k, self.v = (_gather_rows(attn.qkv, attn.num_heads, part) for part in range(3))
        self.register_buffer("bias", attn.attention_biases.detach()[:, attn.attention_bias_idxs].clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows, tokens, channels = x.shape
        heads, width = self.num_heads, self.head_dim
        y = self.norm(x)
        q = self.q(y).view(windows, tokens, heads, width).transpose(1, 2)
        k = self.k(y).view(windows, tokens, heads, width).permute(0, 2, 3, 1)
        v = self.v(y).view(windows, tokens, heads, width).transpose(1, 2)
        scores = torch.matmul(q * width**-0.5, k) + self.bias
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, channels))


class TokenBlock(nn.Module):
    """`TinyViTBlock` on B x L x C tokens of an H x W grid."""

    def __init__(self, block: TinyViTBlock) -> None:
        super().__init__()
        self.window = block.window
        self.attn = TokenWindowAttention(block.attn)
        self.local_conv, self.mlp = block.local_conv, block.mlp

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, tokens, channels = x.shape
        window = self.window
        if height == window and width == window:
            attended = self.attn(x)
        else:
            pad_h = (window - height % window) % window
            pad_w = (window - width % window) % window
            grid = x.view(batch, height, width, channels)
            padded = F.pad(grid, (0, 0, 0, pad_w, 0, pad_h)) if pad_h or pad_w else grid
            n_h, n_w = (height + pad_h) // window, (width + pad_w) // window
            windows = padded.view(batch, n_h, window, n_w, window, channels).transpose(2, 3)
            windows = windows.reshape(batch * n_h * n_w, window * window, channels)
            attended = self.attn(windows).view(batch, n_h, n_w, window, window, channels).transpose(2, 3)
            attended = attended.reshape(batch, n_h * window, n_w * window, channels)
            if pad_h or pad_w:
                attended = attended[:, :height, :width]
            attended = attended.reshape(batch, tokens, channels)
        x = x + attended
        x = self.local_conv(x.transpose(1, 2).reshape(batch, channels, height, width))
        x = x.permute(0, 2, 3, 1).reshape(batch, tokens, channels)
        return x + self.mlp(x)


class TokenAttentionStage(nn.Module):
    """`AttentionStage` (B x C x H x W in and out) with its blocks on B x L x C tokens."""

    def __init__(self, stage: AttentionStage) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TokenBlock(block) for block in stage.blocks)
        self.downsample = stage.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        for block in self.blocks:
            x = block(x, height, width)
        x = x.transpose(1, 2).reshape(batch, channels, height, width)
        return self.downsample(x) if self.downsample is not None else x


def has_token_form(model: SamModel) -> bool:
    """Whether the model's image encoder has TinyViT attention stages (LiteMedSAM, the student)."""
    return any(isinstance(module, AttentionStage) for module in model.image_encoder.modules())


def token_encoder(model: SamModel) -> nn.Module:
    """A copy of `model.image_encoder` with every attention stage in the token form (the model is not changed).

    Raises:
        ValueError: the encoder has no TinyViT attention stage.
    """
    if not has_token_form(model):
        raise ValueError("the token form needs a TinyViT encoder (attention stages); this encoder has none")
    encoder = copy.deepcopy(model.image_encoder)
    for name, module in list(encoder.named_modules()):
        if isinstance(module, AttentionStage):
            parent, _, attr = name.rpartition(".")
            setattr(encoder.get_submodule(parent) if parent else encoder, attr, TokenAttentionStage(module))
    return encoder.eval()
