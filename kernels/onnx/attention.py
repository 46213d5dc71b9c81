"""Attention fusions: rewrite each exported attention subgraph into one fused attention node.

The fused node is onnxruntime's `com.microsoft.MultiHeadAttention` or the standard `Attention` (opset 23). The
shared core every fusion matches, and the base class, are in `attention_core`; the encoders' fusions in
`encoder_attention` and the decoder's in `decoder_attention`. This module names them together: `FUSIONS`, in the
order `fuse_attention` tries them, and the public names as they were always imported from here.
"""

from __future__ import annotations

from .attention_core import ATTENTION, ATTENTION_OPSET, MHA, OPS, AttentionFusion, Core, Plan, match_core
from .decoder_attention import CrossAttentionFusion
from .encoder_attention import RelPosAttentionFusion, WindowAttentionFusion

__all__ = [
    "ATTENTION",
    "ATTENTION_OPSET",
    "FUSIONS",
    "MHA",
    "OPS",
    "AttentionFusion",
    "Core",
    "CrossAttentionFusion",
    "Plan",
    "RelPosAttentionFusion",
    "WindowAttentionFusion",
    "match_core",
]

FUSIONS: tuple[type[AttentionFusion], ...] = (WindowAttentionFusion, RelPosAttentionFusion, CrossAttentionFusion)
