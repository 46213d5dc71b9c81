"""Triton flash-attention forward with SAM's decomposed relative-position bias added inside the kernel.

Importing this module imports Triton and compiles nothing; the kernel is specialised on first launch. Whether it
runs compiled (CUDA) or in Triton's CPU interpreter is decided when this module is imported, by TRITON_INTERPRET.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

__all__ = ["INTERPRETED", "compile_for_gpu", "launch_config", "relpos_attention_triton"]


@triton.jit
def _relpos_attention_fwd(
    Q, K, V, RH, RW, O,
    stride_qb, stride_qn, stride_kb, stride_kn, stride_vb, stride_vn,
    stride_hb, stride_hn, stride_hk, stride_wb, stride_wn, stride_wk,
    stride_ob, stride_on,
    n_q, n_k, k_h, k_w,
    sm_scale,
    HEAD_DIM: tl.constexpr,
    KH_PAD: tl.constexpr,
    KW_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """One program: BLOCK_M queries of one (batch * head) slice against all n_k keys, BLOCK_N keys at a time."""
    pid_m = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_h = tl.arange(0, KH_PAD)
    offs_w = tl.arange(0, KW_PAD)
    row_ok = offs_m < n_q

    q = tl.load(Q + pid_b * stride_qb + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    # The query's whole height and width terms are tiny (k_h and k_w values); they stay in registers for the loop.
    rel_h = tl.load(
        RH + pid_b * stride_hb + offs_m[:, None] * stride_hn + offs_h[None, :] * stride_hk,
        mask=row_ok[:, None] & (offs_h[None, :] < k_h), other=0.0,
    )
    rel_w = tl.load(
        RW + pid_b * stride_wb + offs_m[:, None] * stride_wn + offs_w[None, :] * stride_wk,
        mask=row_ok[:, None] & (offs_w[None, :] < k_w), other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    rel_h = rel_h.to(q.dtype)
    rel_w = rel_w.to(q.dtype)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in range(0, n_k, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < n_k
        k = tl.load(K + pid_b * stride_kb + offs_n[None, :] * stride_kn + offs_d[:, None],  # (D, BLOCK_N)
                    mask=col_ok[None, :], other=0.0)
        v = tl.load(V + pid_b * stride_vb + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k, input_precision=PRECISION) * sm_scale
        # bias[m, n] = rel_h[m, n // k_w] + rel_w[m, n % k_w], as two matmuls with 0/1 selection matrices: each
        # output sums exactly one table entry, so the bias is exact and no N x N tensor ever exists.
        key_row = offs_n // k_w
        key_col = offs_n - key_row * k_w
        pick_h = (offs_h[:, None] == key_row[None, :]).to(q.dtype)
        pick_w = (offs_w[:, None] == key_col[None, :]).to(q.dtype)
        s = tl.dot(rel_h, pick_h, s, input_precision=PRECISION)
        s = tl.dot(rel_w, pick_w, s, input_precision=PRECISION)
        s = tl.where(col_ok[None, :], s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        O + pid_b * stride_ob + offs_m[:, None] * stride_on + offs_d[None, :],
        out.to(O.dtype.element_ty), mask=row_ok[:, None],
    )


INTERPRETED: bool = isinstance(_relpos_attention_fwd, InterpretedFunction)
"""True when the kernel runs in Triton's CPU interpreter (TRITON_INTERPRET=1 at import time)."""

_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def launch_config(slices: int, n_q: int, n_k: int, head_dim: int, device: torch.device) -> dict[str, int]:
    """Block sizes and warps for one launch.

    Queries are cut finer when (batch * heads) x query blocks would leave streaming multiprocessors idle: at batch 1
    a 256-token global block of ViT-B is only 12 slices.

    Args:
        slices: batch * heads.
        n_q, n_k: query and key counts.
        head_dim: D.
        device: where the tensors live; its SM count sizes the grid (132, an H100's, for a non-CUDA device).

    Returns:
        dict with block_m, block_n, num_warps, num_stages.
    """
    block_n = 64 if head_dim <= 64 else 32
    block_n = min(block_n, max(16, triton.next_power_of_2(n_k)))
    block_m = 64
    while block_m > 16 and slices * triton.cdiv(n_q, block_m) < _sm_count(device):
        block_m //= 2
    block_m = min(block_m, max(16, triton.next_power_of_2(n_q)))
    return {"block_m": block_m, "block_n": block_n, "num_warps": 4 if block_m >= 64 else 2, "num_stages": 2}


def _as_slices(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """View (..., rows, cols) as (S, rows, cols) with a unit stride on the last axis (copying only if needed)."""
    t = t.reshape(-1, rows, cols)
    return t if t.stride(-1) == 1 else t.contiguous()


def relpos_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h: torch.Tensor,
    rel_w: torch.Tensor,
    scale: float | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Launch the kernel: softmax(q k^T * scale + bias) v with bias[i, r * k_w + c] = rel_h[i, r] + rel_w[i, c].

    Shapes are not validated here beyond what the launch needs; `op.check_shapes` does that for the custom op.

    Args:
        q: (S, n_q, D) or (B, H, n_q, D) queries, fp16 / bf16 (fp32 also runs, with IEEE fp32 dots).
        k, v: (S, n_k, D) or (B, H, n_k, D) keys and values, same dtype, n_k = k_h * k_w (row-major key grid).
        rel_h: (..., n_q, k_h) height terms (q . R_h[query row - key row]); cast to q's dtype.
        rel_w: (..., n_q, k_w) width terms; cast to q's dtype.
        scale: logit scale, default D ** -0.5; the rel terms are added unscaled, as in SAM.
        block_m, block_n, num_warps: override `launch_config` (block sizes are powers of two >= 16).

    Returns:
        Tensor shaped like q, in q's dtype.
    """
    head_dim = q.shape[-1]
    n_q, n_k = q.shape[-2], k.shape[-2]
    k_h, k_w = rel_h.shape[-1], rel_w.shape[-1]
    q3 = _as_slices(q, n_q, head_dim)
    k3 = _as_slices(k, n_k, head_dim)
    v3 = _as_slices(v, n_k, head_dim)
    rh3 = rel_h.to(q.dtype).reshape(-1, n_q, k_h)
    rw3 = rel_w.to(q.dtype).reshape(-1, n_q, k_w)
    out = torch.empty((q3.shape[0], n_q, head_dim), dtype=q.dtype, device=q.device)
    config = launch_config(q3.shape[0], n_q, n_k, head_dim, q.device)
    block_m = block_m or config["block_m"]
    block_n = block_n or config["block_n"]
    grid = (triton.cdiv(n_q, block_m), q3.shape[0])
    _relpos_attention_fwd[grid](
        q3, k3, v3, rh3, rw3, out,
        q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1), v3.stride(0), v3.stride(1),
        rh3.stride(0), rh3.stride(1), rh3.stride(2), rw3.stride(0), rw3.stride(1), rw3.stride(2),
        out.stride(0), out.stride(1),
        n_q, n_k, k_h, k_w,
        float(scale if scale is not None else 1.0 / math.sqrt(head_dim)),
        HEAD_DIM=head_dim,
        KH_PAD=max(16, triton.next_power_of_2(k_h)),
        KW_PAD=max(16, triton.next_power_of_2(k_w)),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        # The interpreter multiplies bf16 tiles as their raw uint16 storage; fp32 operands give the right numbers.
        UPCAST=INTERPRETED and q.dtype == torch.bfloat16,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=num_warps or config["num_warps"],
        num_stages=config["num_stages"],
    )
    return out.reshape(q.shape)


_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def compile_for_gpu(
    arch: int,
    dtype: torch.dtype,
    head_dim: int,
    block_m: int,
    block_n: int,
    num_warps: int,
    grid_side: int = 16,
):
    """Compile the kernel ahead of time for a CUDA architecture, without a GPU (Triton ships ptxas).

    Checks code generation where no device is available: the returned kernel's ``asm`` holds the PTX and cubin.

    Args:
        arch: compute capability as an int (80 = A100, 90 = H100 / H200).
        dtype: element type of q, k, v, rel_h, rel_w and the output.
        head_dim, block_m, block_n, num_warps: the specialisation, as `launch_config` would choose it.
        grid_side: largest key-grid side (sets KH_PAD = KW_PAD).

    Returns:
        triton.compiler.CompiledKernel.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    kernel = _relpos_attention_fwd
    jit_fn = JITFunction(kernel.fn) if isinstance(kernel, InterpretedFunction) else kernel
    pad = max(16, triton.next_power_of_2(grid_side))
    constexprs = {
        "HEAD_DIM": head_dim, "KH_PAD": pad, "KW_PAD": pad, "BLOCK_M": block_m, "BLOCK_N": block_n,
        "UPCAST": False, "PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }
    pointer = "*" + _TRITON_DTYPES[dtype]
    kinds = {name: pointer for name in ("Q", "K", "V", "RH", "RW", "O")} | {"sm_scale": "fp32"}
    kinds |= {name: "constexpr" for name in constexprs}
    signature = {name: kinds.get(name, "i32") for name in jit_fn.arg_names}  # the rest are strides and sizes
    source = ASTSource(jit_fn, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": 2})
