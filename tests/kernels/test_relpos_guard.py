"""When the fused kernel applies: `relpos_attention_supported` / `relpos_attention_fallback_reason`."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sammed_edge.kernels.triton import (
    DISABLE_ENV,
    relpos_attention_fallback_reason,
    relpos_attention_supported,
)
from sammed_edge.kernels.triton import op as op_module


@pytest.fixture
def fake_cuda():
    """Fake CUDA tensors (no GPU needed): `fake_cuda(*shape, dtype=)`."""
    with FakeTensorMode():
        yield lambda *shape, dtype=torch.bfloat16: torch.empty(*shape, device="cuda", dtype=dtype)


@pytest.fixture(autouse=True)
def switch_unset(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.setattr(op_module, "_TRITON_AVAILABLE", True)


def test_falls_back_on_cpu():
    q = torch.randn(48, 196, 64, dtype=torch.bfloat16)
    assert not relpos_attention_supported(q, q, q)
    assert "not CUDA" in relpos_attention_fallback_reason(q)


def test_applies_to_sam_med2d_shapes_on_cuda(fake_cuda):
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (16, 32, 64):
            for slices, tokens in ((48, 196), (12, 256)):
                q = fake_cuda(slices, tokens, head_dim, dtype=dtype)
                assert relpos_attention_supported(q, q, q), (dtype, head_dim, tokens)
    q4 = fake_cuda(1, 12, 256, 64)
    rel = fake_cuda(1, 12, 256, 16)
    assert relpos_attention_supported(q4, q4, q4, rel, rel)


@pytest.mark.parametrize(
    "shape,dtype,why",
    [
        ((12, 256, 64), torch.float32, "not fp16/bf16"),
        ((12, 256, 80), torch.bfloat16, "head dim 80"),
        ((12, 256, 8), torch.bfloat16, "head dim 8"),
        ((2, 4097, 64), torch.bfloat16, "exceed"),
        ((256, 64), torch.bfloat16, "head dim"),
    ],
)
def test_unsupported_inputs_fall_back(fake_cuda, shape, dtype, why):
    q = fake_cuda(*shape, dtype=dtype)
    assert not relpos_attention_supported(q)
    assert why in relpos_attention_fallback_reason(q)


def test_mismatched_companions_fall_back(fake_cuda):
    q = fake_cuda(12, 256, 64)
    assert not relpos_attention_supported(q, fake_cuda(12, 256, 64, dtype=torch.float16), q)
    assert not relpos_attention_supported(q, q, q, fake_cuda(12, 256, 16), fake_cuda(12, 256, 15))
    assert not relpos_attention_supported(q, q, q, fake_cuda(12, 256, 128), fake_cuda(12, 256, 2))


@pytest.mark.parametrize("value,disabled", [("1", True), ("true", True), ("0", False), ("", False)])
def test_environment_switch(fake_cuda, monkeypatch, value, disabled):
    q = fake_cuda(48, 196, 64)
    monkeypatch.setenv(DISABLE_ENV, value)
    assert relpos_attention_supported(q, q, q) is not disabled
    if disabled:
        assert DISABLE_ENV in relpos_attention_fallback_reason(q)


def test_without_triton(fake_cuda, monkeypatch):
    monkeypatch.setattr(op_module, "_TRITON_AVAILABLE", False)
    q = fake_cuda(48, 196, 64)
    assert relpos_attention_fallback_reason(q) == "triton is not installed"
