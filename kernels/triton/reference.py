"""Plain-torch reference for attention with SAM's decomposed relative-position bias (forward and backward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["relpos_attention_backward", "relpos_attention_reference", "relpos_bias"]


def relpos_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """Materialise the additive bias from its decomposed terms.

    Args:
        rel_h: (..., n_q, k_h) height terms, one per (query, key row).
        rel_w: (..., n_q, k_w) width terms, one per (query, key column).

    Returns:
        (..., n_q, k_h * k_w) bias with bias[..., i, r * k_w + c] = rel_h[..., i, r] + rel_w[..., i, c] (keys in
        row-major grid order, as SAM flattens them).
    """
    bias = rel_h[..., :, None] + rel_w[..., None, :]
    return bias.flatten(-2)


def relpos_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v with the bias materialised, through `scaled_dot_product_attention`.

    Args:
        q: (..., n_q, D) queries.
        k, v: (..., n_k, D) keys and values, n_k = k_h * k_w.
        rel_h: (..., n_q, k_h); rel_w: (..., n_q, k_w) (see `relpos_bias`).
        scale: logit scale, default D ** -0.5.

    Returns:
        (..., n_q, D) in q's dtype.
    """
    bias = relpos_bias(rel_h, rel_w).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


def relpos_attention_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `relpos_attention_reference` with respect to q, k, v, rel_h and rel_w.

    Recomputes the probabilities in fp32 or wider (N x N per slice: fine for SAM's <= 4096-token blocks, not
    memory-lean).

    Args:
        grad_out: (..., n_q, D) gradient of the output.
        q, k, v, rel_h, rel_w, scale: the forward's inputs.

    Returns:
        (dq, dk, dv, d_rel_h, d_rel_w), each shaped and typed like its input.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    wide = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf, go = (t.to(wide) for t in (q, k, v, grad_out))
    logits = qf @ kf.transpose(-1, -2) * scale + relpos_bias(rel_h.to(wide), rel_w.to(wide))
    probs = torch.softmax(logits, dim=-1)
    dv = probs.transpose(-1, -2) @ go
    dprobs = go @ vf.transpose(-1, -2)
    dlogits = probs * (dprobs - (dprobs * probs).sum(-1, keepdim=True))
    dq = dlogits @ kf * scale
    dk = dlogits.transpose(-1, -2) @ qf * scale
    grid = dlogits.unflatten(-1, (rel_h.shape[-1], rel_w.shape[-1]))
    return (
        dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
        grid.sum(-1).to(rel_h.dtype), grid.sum(-2).to(rel_w.dtype),
    )
