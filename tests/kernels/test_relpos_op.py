"""The custom op sammed_edge::relpos_attention: schema, fake implementation, torch.compile, autograd."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sammed_edge.kernels.triton import OP_NAME, relpos_attention, relpos_attention_backward, relpos_attention_reference


def test_registered_under_its_name():
    assert OP_NAME == "sammed_edge::relpos_attention"
    assert torch.ops.sammed_edge.relpos_attention.default is not None


def test_fake_implementation_gives_shape_dtype_device_without_running():
    # fake CUDA tensors exist without a GPU; nothing runs, so this also holds on a CPU-only machine
    with FakeTensorMode():
        q, k, v = (torch.empty(48, 196, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        rel_h, rel_w = (torch.empty(48, 196, 14, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = torch.ops.sammed_edge.relpos_attention(q, k, v, rel_h, rel_w)
        assert out.shape == (48, 196, 64) and out.dtype == torch.bfloat16 and out.device.type == "cuda"
        q4 = torch.empty(1, 12, 256, 32, device="cuda", dtype=torch.float16)
        rel4 = torch.empty(1, 12, 256, 16, device="cuda", dtype=torch.float16)
        assert relpos_attention(q4, q4, q4, rel4, rel4).shape == (1, 12, 256, 32)
        # (no slicing: views of fake CUDA tensors need a CUDA-enabled build)
        rel_13 = torch.empty(48, 196, 13, device="cuda", dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="key grid"):
            relpos_attention(q, k, v, rel_h, rel_13)
        short = torch.empty(48, 100, 64, device="cuda", dtype=torch.bfloat16)
        with pytest.raises(ValueError, match="k .* and v"):
            relpos_attention(q, short, v, rel_h, rel_w)


def test_opcheck(kernel_device, make_inputs):
    inputs = make_inputs(2, (4, 5), 16, torch.float32, kernel_device, seed=7)
    torch.library.opcheck(torch.ops.sammed_edge.relpos_attention.default, tuple(inputs))
    torch.library.opcheck(torch.ops.sammed_edge.relpos_attention.default, tuple(inputs), {"scale": 0.2})


def test_torch_compile_traces_through_the_fake(kernel_device, make_inputs, tolerance):
    def block(q, k, v, rel_h, rel_w):
        return relpos_attention(q * 1.5, k, v, rel_h, rel_w).relu() + 1

    inputs = make_inputs(2, (4, 4), 32, torch.float32, kernel_device, seed=8)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), block(*inputs), rtol=0, atol=tolerance[torch.float32])


def test_autograd_uses_the_torch_backward(kernel_device, make_inputs):
    inputs = make_inputs(2, (3, 4), 16, torch.float32, kernel_device, n_q=9, seed=9)
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = relpos_attention(*leaves)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(relpos_attention_reference(*ref_leaves), ref_leaves, grad_out.double())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[0], relpos_attention_backward(grad_out, *inputs)[0])


def test_refuses_cpu_tensors_outside_the_interpreter(monkeypatch, make_inputs):
    pytest.importorskip("triton")
    from sammed_edge.kernels.triton import relpos_kernel

    monkeypatch.setattr(relpos_kernel, "INTERPRETED", False)
    with pytest.raises(RuntimeError, match="relpos_attention_supported"):
        relpos_attention(*make_inputs(1, (2, 8), 16, torch.float32, "cpu"))
