"""Triton flash attention with SAM's decomposed relative-position bias fused in.

`relpos_attention` is the custom op ``sammed_edge::relpos_attention`` (Triton kernel, fake implementation for
``torch.compile``, plain-torch backward); `relpos_attention_reference` is the same computation through
``scaled_dot_product_attention`` with the bias materialised; `relpos_attention_supported` says when the kernel
applies; SAMMED_EDGE_DISABLE_TRITON=1 turns it off. Importing this package does not import Triton.
"""

from .op import (
    DISABLE_ENV,
    MAX_GRID_SIDE,
    MAX_TOKENS,
    OP_NAME,
    SUPPORTED_DTYPES,
    SUPPORTED_HEAD_DIMS,
    relpos_attention,
    relpos_attention_fallback_reason,
    relpos_attention_supported,
)
from .reference import relpos_attention_backward, relpos_attention_reference, relpos_bias

__all__ = [
    "DISABLE_ENV",
    "MAX_GRID_SIDE",
    "MAX_TOKENS",
    "OP_NAME",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "relpos_attention",
    "relpos_attention_backward",
    "relpos_attention_fallback_reason",
    "relpos_attention_reference",
    "relpos_attention_supported",
    "relpos_bias",
]
