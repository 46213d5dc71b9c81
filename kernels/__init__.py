"""Fused attention kernels (Triton) and ONNX graph fusions.

The names below load on first use (they need torch), so importing this package stays free of heavy dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    name: "triton"
    for name in (
        "relpos_attention",
        "relpos_attention_reference",
        "relpos_attention_supported",
        "relpos_attention_fallback_reason",
        "relpos_bias",
    )
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
