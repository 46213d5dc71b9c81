"""Kernel tests run on CUDA when there is one, else on CPU in Triton's interpreter.

The interpreter is chosen when the kernel module is first imported, so TRITON_INTERPRET is set here, before any
test imports it (nothing imports the kernel module at collection time: the op loads it on first launch).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None

if HAS_TRITON and not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def kernel_device() -> torch.device:
    """Where the Triton kernel can run in this process: CUDA, or the CPU through the interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed (the `kernels` extra)")
    from sammed_edge.kernels.triton import relpos_kernel

    if relpos_kernel.INTERPRETED:
        return torch.device("cpu")
    if not HAS_CUDA:
        pytest.skip("the kernel module was imported before TRITON_INTERPRET=1 could be set and there is no CUDA")
    return torch.device("cuda")


def _random_inputs(slices, grid, head_dim, dtype, device, *, seed=0, rel_scale=1.0, lead=None, n_q=None):
    k_h, k_w = grid
    n_k = k_h * k_w
    n_q = n_k if n_q is None else n_q
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(slices, n, head_dim, generator=gen) for n in (n_q, n_k, n_k))
    rel_h = rel_scale * torch.randn(slices, n_q, k_h, generator=gen)
    rel_w = rel_scale * torch.randn(slices, n_q, k_w, generator=gen)
    tensors = [t.to(device=device, dtype=dtype) for t in (q, k, v, rel_h, rel_w)]
    if lead is not None:
        tensors = [t.reshape(*lead, *t.shape[1:]) for t in tensors]
    return tensors


@pytest.fixture(scope="session")
def make_inputs():
    """`make_inputs(slices, (k_h, k_w), head_dim, dtype, device, seed=, rel_scale=, lead=, n_q=)` -> q, k, v,
    rel_h, rel_w: random inputs for `slices` attention slices over a k_h x k_w key grid (`lead` reshapes them to
    (B, H, ...)); n_q defaults to k_h * k_w."""
    return _random_inputs


@pytest.fixture(scope="session")
def tolerance():
    """Max abs error allowed against an fp64 reference (outputs are O(1)): bf16 keeps 8 mantissa bits and the
    interpreter rounds bf16 stores toward zero, fp16 keeps 11."""
    return {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2.5e-2}
