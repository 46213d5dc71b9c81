"""The plain-torch reference: bias layout (SAM's), forward formula and the backward used by the custom op."""

from __future__ import annotations

import pytest
import torch

from sammed_edge.export.models.image_encoder_vit import decomposed_rel_pos_bias, relative_position_table
from sammed_edge.kernels.triton import relpos_attention_backward, relpos_attention_reference, relpos_bias


def test_bias_layout_matches_the_encoders_decomposed_bias():
    gen = torch.Generator().manual_seed(0)
    q_h, q_w, dim = 5, 7, 8
    q = torch.randn(3, q_h * q_w, dim, generator=gen, dtype=torch.float64)
    rel_pos_h = torch.randn(2 * q_h - 1, dim, generator=gen, dtype=torch.float64)
    rel_pos_w = torch.randn(2 * q_w - 1, dim, generator=gen, dtype=torch.float64)
    grid_q = q.reshape(3, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", grid_q, relative_position_table(q_h, q_h, rel_pos_h)).reshape(3, -1, q_h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", grid_q, relative_position_table(q_w, q_w, rel_pos_w)).reshape(3, -1, q_w)
    expected = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, (q_h, q_w), (q_h, q_w))
    torch.testing.assert_close(relpos_bias(rel_h, rel_w), expected, rtol=0, atol=1e-12)


def test_reference_is_softmax_of_scaled_logits_plus_bias(make_inputs):
    q, k, v, rel_h, rel_w = make_inputs(2, (3, 5), 8, torch.float64, "cpu", n_q=11)
    bias = torch.stack([torch.stack([rel_h[s, i, r] + rel_w[s, i, c] for r in range(3) for c in range(5)])
                        for s in range(2) for i in range(11)]).reshape(2, 11, 15)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + bias, -1) @ v
    torch.testing.assert_close(relpos_attention_reference(q, k, v, rel_h, rel_w), expected)
    scaled = torch.softmax(q @ k.transpose(-1, -2) * 0.3 + bias, -1) @ v
    torch.testing.assert_close(relpos_attention_reference(q, k, v, rel_h, rel_w, scale=0.3), scaled)


@pytest.mark.parametrize("lead", [None, (2, 3)], ids=["slices", "batch-heads"])
def test_backward_matches_autograd_of_the_reference(make_inputs, lead):
    inputs = make_inputs(6, (4, 3), 16, torch.float64, "cpu", n_q=10, lead=lead, seed=3)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = relpos_attention_reference(*leaves)
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, leaves, grad_out)
    got = relpos_attention_backward(grad_out, *inputs)
    for name, g, e in zip(("q", "k", "v", "rel_h", "rel_w"), got, expected):
        assert g.shape == e.shape, name
        torch.testing.assert_close(g, e, msg=lambda m, name=name: f"d{name}: {m}")
