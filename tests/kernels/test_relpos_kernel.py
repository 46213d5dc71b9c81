"""The Triton kernel against the fp64 reference: on CUDA when present, else on CPU in Triton's interpreter.

Interpreter runs use small slice counts (the interpreter executes every program in Python); the full batch-1
shapes of SAM-Med2D ViT-B run in the `gpu` tests.
"""

from __future__ import annotations

import pytest
import torch

from sammed_edge.kernels.triton import relpos_attention, relpos_attention_reference

WINDOW, GLOBAL = (14, 14), (16, 16)  # 196 tokens per window (not a multiple of any block size), 256 global


def check(out, inputs, tol, scale=None):
    truth = relpos_attention_reference(*(t.double() for t in inputs), scale=scale)
    assert out.shape == inputs[0].shape and out.dtype == inputs[0].dtype
    err = (out.double() - truth).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("grid", [WINDOW, GLOBAL], ids=["window196", "global256"])
@pytest.mark.parametrize("head_dim", [16, 32, 64])
def test_shape_families_fp16(kernel_device, make_inputs, tolerance, grid, head_dim):
    inputs = make_inputs(2, grid, head_dim, torch.float16, kernel_device, seed=head_dim)
    check(relpos_attention(*inputs), inputs, tolerance[torch.float16])


@pytest.mark.parametrize("grid", [WINDOW, GLOBAL], ids=["window196", "global256"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_other_dtypes(kernel_device, make_inputs, tolerance, grid, dtype):
    inputs = make_inputs(1, grid, 64, dtype, kernel_device, seed=1)
    check(relpos_attention(*inputs), inputs, tolerance[dtype])


def test_batch_one_head_dim_64_as_batch_heads(kernel_device, make_inputs, tolerance):
    # (B, H, N, D) with B = 1 at head dim 64: the layout and case the public segment-anything-fast kernel refuses
    inputs = make_inputs(2, WINDOW, 64, torch.float16, kernel_device, lead=(1, 2), seed=2)
    check(relpos_attention(*inputs), inputs, tolerance[torch.float16])


@pytest.mark.parametrize("blocks", [(16, 16), (32, 64), (64, 32)])
def test_ragged_tiles_and_rectangular_grid(kernel_device, make_inputs, tolerance, blocks):
    from sammed_edge.kernels.triton.relpos_kernel import relpos_attention_triton

    # 50 queries against a 7 x 9 key grid: partial query and key tiles, k_h != k_w, n_q != n_k
    inputs = make_inputs(2, (7, 9), 32, torch.float32, kernel_device, n_q=50, seed=4)
    out = relpos_attention_triton(*inputs, block_m=blocks[0], block_n=blocks[1])
    check(out, inputs, tolerance[torch.float32])


def test_strided_inputs_from_a_fused_qkv(kernel_device, make_inputs, tolerance):
    from sammed_edge.kernels.triton.relpos_kernel import relpos_attention_triton

    # q, k, v as non-contiguous views of one (S, N, 3, D) tensor; rel terms transposed in memory
    q, k, v, rel_h, rel_w = make_inputs(2, WINDOW, 32, torch.float16, kernel_device, seed=5)
    qkv = torch.stack([q, k, v], dim=2)
    rel_h_t = rel_h.transpose(1, 2).contiguous().transpose(1, 2)
    inputs = (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], rel_h_t, rel_w)
    assert not inputs[0].is_contiguous() and not rel_h_t.is_contiguous()
    check(relpos_attention_triton(*inputs), inputs, tolerance[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_large_bias_and_custom_scale_stay_stable(kernel_device, make_inputs, tolerance, dtype):
    # rel terms of +-60 make most probabilities underflow; the online softmax must not overflow or lose the max
    inputs = make_inputs(1, GLOBAL, 32, dtype, kernel_device, rel_scale=30.0, seed=6)
    out = relpos_attention(*inputs, scale=0.5)
    assert torch.isfinite(out).all()
    check(out, inputs, tolerance[dtype], scale=0.5)


def test_launch_config_fills_the_gpu_at_batch_one():
    from sammed_edge.kernels.triton.relpos_kernel import launch_config

    cpu = torch.device("cpu")  # sized for 132 SMs
    window = launch_config(48, 196, 196, 64, cpu)
    global_ = launch_config(12, 256, 256, 64, cpu)
    assert window["block_m"] == 64 and global_["block_m"] == 16
    assert launch_config(2, 10, 10, 16, cpu)["block_n"] == 16
    for config in (window, global_):
        assert config["block_n"] >= 16 and config["block_m"] >= 16


# ---- full batch-1 shapes of SAM-Med2D ViT-B (12 heads) and the students' head dims, on a GPU -------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("head_dim", [16, 32, 64])
@pytest.mark.parametrize(
    "slices,grid", [(48, WINDOW), (12, GLOBAL), (96, WINDOW)], ids=["window4x196", "global256", "batch2-window"]
)
def test_full_shapes_on_gpu(make_inputs, tolerance, dtype, head_dim, slices, grid):
    from sammed_edge.kernels.triton import relpos_attention_supported

    inputs = make_inputs(slices, grid, head_dim, dtype, "cuda", seed=head_dim)
    assert relpos_attention_supported(*inputs)
    out = relpos_attention(*inputs)
    check(out, inputs, tolerance[dtype])
    # no worse than the reference computed in the same precision (plus one output ulp)
    truth = relpos_attention_reference(*(t.double() for t in inputs))
    same_precision = relpos_attention_reference(*inputs)
    ulp = torch.finfo(dtype).eps
    assert (out.double() - truth).abs().max() <= (same_precision.double() - truth).abs().max() + 2 * ulp
