"""The fused kernel as the torch custom op ``sammed_edge::relpos_attention``, and the guard that says when to use it.

The op has a fake implementation (so ``torch.compile`` traces it without running Triton) and a backward in plain
torch (recomputing the probabilities), so a model that routes through it can also be trained.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .reference import relpos_attention_backward

__all__ = [
    "DISABLE_ENV",
    "MAX_GRID_SIDE",
    "MAX_TOKENS",
    "OP_NAME",
    "SUPPORTED_DTYPES",
    "SUPPORTED_HEAD_DIMS",
    "check_shapes",
    "relpos_attention",
    "relpos_attention_fallback_reason",
    "relpos_attention_supported",
]

OP_NAME = "sammed_edge::relpos_attention"
DISABLE_ENV = "SAMMED_EDGE_DISABLE_TRITON"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
MAX_TOKENS = 4096  # SAM ViT at 1024 px: a 64 x 64 global grid
MAX_GRID_SIDE = 64  # each query's k_h and k_w terms stay in registers for the whole key loop

_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor) -> None:
    """Raise ValueError unless the five tensors fit together (see `relpos_attention` for the shapes)."""
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be (S, N, D) or (B, H, N, D), got {tuple(q.shape)}")
    lead, head_dim = q.shape[:-2], q.shape[-1]
    if k.shape != v.shape or k.shape[:-2] != lead or k.shape[-1] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must be (..., n_k, D) like q {tuple(q.shape)}")
    n_k = k.shape[-2]
    if rel_h.shape[:-1] != q.shape[:-1] or rel_w.shape[:-1] != q.shape[:-1]:
        raise ValueError(f"rel_h {tuple(rel_h.shape)} and rel_w {tuple(rel_w.shape)} must be (..., n_q, k_h|k_w) "
                         f"with (..., n_q) = {tuple(q.shape[:-1])}")
    if rel_h.shape[-1] * rel_w.shape[-1] != n_k:
        raise ValueError(f"the key grid {rel_h.shape[-1]} x {rel_w.shape[-1]} does not hold the {n_k} keys")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device == rel_h.device == rel_w.device):
        raise ValueError("q, k and v must share one dtype, and all inputs one device")


@torch.library.custom_op(OP_NAME, mutates_args=())
def relpos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Fused attention with decomposed relative positions (Triton): softmax(q k^T * scale + bias) v.

    bias[i, r * k_w + c] = rel_h[i, r] + rel_w[i, c] is formed tile by tile inside the kernel, never as n_q x n_k.
    Runs on CUDA, or on CPU when Triton's interpreter is on (TRITON_INTERPRET=1 before the kernel is first used).
    Callers choose between this and `relpos_attention_reference` with `relpos_attention_supported`.

    Args:
        q: (S, n_q, D) or (B, H, n_q, D) queries; D a power of two >= 16.
        k, v: (..., n_k, D) keys and values, n_k = k_h * k_w keys of a row-major grid.
        rel_h: (..., n_q, k_h) height terms, e.g. einsum of the unscaled queries with SAM's height table.
        rel_w: (..., n_q, k_w) width terms.
        scale: logit scale, default D ** -0.5 (the rel terms are not scaled).

    Returns:
        Tensor shaped and typed like q.
    """
    check_shapes(q, k, v, rel_h, rel_w)
    from .relpos_kernel import INTERPRETED, relpos_attention_triton

    if not (q.is_cuda or INTERPRETED):
        raise RuntimeError(f"{OP_NAME} runs on CUDA (or in Triton's interpreter); got a {q.device.type} tensor. "
                           "Check relpos_attention_supported() first and use relpos_attention_reference otherwise.")
    return relpos_attention_triton(q, k, v, rel_h, rel_w, scale)


@relpos_attention.register_fake
def _relpos_attention_fake(q, k, v, rel_h, rel_w, scale=None):
    check_shapes(q, k, v, rel_h, rel_w)
    return q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, rel_h, rel_w, scale = inputs
    ctx.save_for_backward(q, k, v, rel_h, rel_w)
    ctx.scale = scale


def _backward(ctx, grad_out):
    q, k, v, rel_h, rel_w = ctx.saved_tensors
    return (*relpos_attention_backward(grad_out, q, k, v, rel_h, rel_w, ctx.scale), None)


relpos_attention.register_autograd(_backward, setup_context=_setup_context)


def relpos_attention_fallback_reason(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rel_h: torch.Tensor | None = None,
    rel_w: torch.Tensor | None = None,
) -> str | None:
    """Why the fused kernel does not apply to these inputs, or None when it does (see `relpos_attention_supported`)."""
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        return f"{DISABLE_ENV} is set"
    if not _TRITON_AVAILABLE:
        return "triton is not installed"
    if not q.is_cuda:
        return f"tensors are on {q.device.type}, not CUDA"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not fp16/bf16"
    if q.dim() not in (3, 4) or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} of q {tuple(q.shape)} is not one of {SUPPORTED_HEAD_DIMS}"
    if q.shape[-2] > MAX_TOKENS:
        return f"{q.shape[-2]} queries exceed {MAX_TOKENS}"
    if k is not None and v is not None and rel_h is not None and rel_w is not None:
        if rel_h.shape[-1] > MAX_GRID_SIDE or rel_w.shape[-1] > MAX_GRID_SIDE:
            return f"key grid {rel_h.shape[-1]} x {rel_w.shape[-1]} exceeds {MAX_GRID_SIDE} per side"
        try:
            check_shapes(q, k, v, rel_h, rel_w)
        except ValueError as exc:
            return str(exc)
    else:
        for name, other in (("k", k), ("v", v)):
            if other is not None and (other.shape != q.shape or other.dtype != q.dtype or other.device != q.device):
                return f"{name} {tuple(other.shape)} {other.dtype} does not match q {tuple(q.shape)} {q.dtype}"
    return None


def relpos_attention_supported(
    q: torch.Tensor,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    rel_h: torch.Tensor | None = None,
    rel_w: torch.Tensor | None = None,
) -> bool:
    """Whether `relpos_attention` (the Triton kernel) applies; never raises.

    True when: SAMMED_EDGE_DISABLE_TRITON is not set, Triton is installed, q is a CUDA tensor in fp16 or bf16 with
    a head dim in SUPPORTED_HEAD_DIMS and at most MAX_TOKENS queries, and the other tensors (those given) match:
    k and v like q (self-attention when rel_h / rel_w are not given), a key grid of at most MAX_GRID_SIDE per side.

    Args:
        q: (S, n_q, D) or (B, H, n_q, D) queries.
        k, v: optional keys and values.
        rel_h, rel_w: optional decomposed terms; with all four given the shapes are checked in full.
    """
    return relpos_attention_fallback_reason(q, k, v, rel_h, rel_w) is None
