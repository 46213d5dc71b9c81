"""Measurements of the fused rel-pos attention kernel against scaled_dot_product_attention with the bias materialised.

Batch 1: attention alone at SAM-Med2D's shapes (`bench_attention`), a sweep of the kernel's launch configurations
(`sweep_launch_configs`) and a whole image encoder with and without the kernel (`bench_encoder`, given the encoder
by its caller, so this package imports no model code), timed with CUDA events (`time_cuda`), and their Markdown.
The benchmark that runs them on a GPU and writes docs/relpos-bench.* is `export/studies/relpos_bench.py`.
"""

from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from .op import DISABLE_ENV, relpos_attention
from .reference import relpos_bias

logger = logging.getLogger(__name__)

HEADS = 12
# (name, attention slices at batch 1, key grid): SAM-Med2D pads 16 x 16 tokens to 28 x 28, i.e. 4 windows.
SHAPES = (("window 4x14x14", 4 * HEADS, (14, 14)), ("global 16x16", HEADS, (16, 16)))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Max abs error of the fused output against fp32 math (outputs are O(1)) beyond which the run is reported as failed.
TOLERANCE = {"bf16": 1.6e-2, "fp16": 2e-3}


def time_cuda(
    fn: Callable[[], Any], warmup: int, reps: int, *, eager: bool = True, graph: bool = True
) -> dict[str, float | str | None]:
    """Median milliseconds per call of `fn` over 5 rounds of `reps` calls, timed with CUDA events.

    Args:
        fn: the call to time (no arguments).
        warmup: untimed calls first.
        reps: calls per round.
        eager: time back-to-back eager calls (launch overhead included) -> "eager_ms".
        graph: time replays of a CUDA graph of `reps` calls (device time) -> "graph_ms", or "graph_error" with
            the first line of the error when capture fails.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def median_ms(run: Callable[[], Any]) -> float:
        rounds = []
        for _ in range(5):
            start.record()
            run()
            end.record()
            end.synchronize()
            rounds.append(start.elapsed_time(end) / reps)
        return statistics.median(rounds)

    def calls() -> None:
        for _ in range(reps):
            fn()

    result: dict[str, float | str | None] = {}
    if eager:
        result["eager_ms"] = median_ms(calls)
    if graph:
        result["graph_ms"] = None
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # warm the side stream before capture
            torch.cuda.current_stream().wait_stream(stream)
            cuda_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cuda_graph):
                calls()
            cuda_graph.replay()
            torch.cuda.synchronize()
            result["graph_ms"] = median_ms(cuda_graph.replay)
        except RuntimeError as exc:
            logger.warning("CUDA graph capture failed: %s", str(exc).splitlines()[0])
            result["graph_error"] = str(exc).splitlines()[0]
    return result


Timer = Callable[..., dict[str, Any]]  # the signature of time_cuda


def bench_attention(
    dtype_name: str,
    head_dim: int,
    warmup: int,
    reps: int,
    *,
    shapes: tuple[tuple[str, int, tuple[int, int]], ...] = SHAPES,
    device: str = "cuda",
    timer: Timer = time_cuda,
) -> list[dict[str, Any]]:
    """Rows for every attention shape at one dtype and head dim: fused, SDPA + materialised bias, SDPA without bias.

    Args:
        dtype_name: key of DTYPES.
        head_dim: D.
        warmup, reps: passed to `timer`.
        shapes: (name, slices, (k_h, k_w)) per case.
        device, timer: where to run and how to time (the defaults are the benchmark; tests run small shapes on CPU).

    Returns:
        One dict per (shape, method) with the timings and, for the two bias methods, the max abs error vs fp32.
    """
    from .relpos_kernel import launch_config

    dtype = DTYPES[dtype_name]
    rows = []
    for name, slices, (k_h, k_w) in shapes:
        n = k_h * k_w
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(slices, n, head_dim, device=device, generator=gen, dtype=dtype) for _ in range(3))
        rel_h = torch.randn(slices, n, k_h, device=device, generator=gen, dtype=dtype)
        rel_w = torch.randn(slices, n, k_w, device=device, generator=gen, dtype=dtype)
        truth = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=relpos_bias(rel_h.float(), rel_w.float())
        )
        methods = {
            "fused (triton)": lambda: relpos_attention(q, k, v, rel_h, rel_w),
            "sdpa + materialised bias": lambda: F.scaled_dot_product_attention(
                q, k, v, attn_mask=relpos_bias(rel_h, rel_w)
            ),
            "sdpa, no bias (floor)": lambda: F.scaled_dot_product_attention(q, k, v),
        }
        for method, fn in methods.items():
            with torch.inference_mode():
                out = fn()
                row = {"shape": name, "slices": slices, "tokens": n, "head_dim": head_dim, "dtype": dtype_name,
                       "method": method, **timer(fn, warmup, reps)}
            if "no bias" not in method:
                row["max_abs_err_vs_fp32"] = (out.float() - truth).abs().max().item()
            if method.startswith("fused"):
                row["launch"] = launch_config(slices, n, n, head_dim, torch.device(device))
            rows.append(row)
        _add_speedups(rows[-3], rows[-2])
    return rows


# (block_m, block_n, num_warps) tried by the sweep; the launch_config default is always included.
SWEEP = ((64, 64, 4), (32, 64, 4), (32, 64, 2), (16, 64, 2), (16, 32, 2), (64, 32, 4), (128, 64, 8))


def sweep_launch_configs(
    dtype_name: str,
    head_dim: int,
    warmup: int,
    reps: int,
    *,
    shapes: tuple[tuple[str, int, tuple[int, int]], ...] = SHAPES,
    configs: tuple[tuple[int, int, int], ...] = SWEEP,
    device: str = "cuda",
    timer: Timer = time_cuda,
) -> list[dict[str, Any]]:
    """Time the kernel under several block sizes / warp counts per shape (data for tuning `launch_config`).

    Returns:
        One row per (shape, config) with the timings and "default": whether `launch_config` picks it.
    """
    from .relpos_kernel import launch_config, relpos_attention_triton

    dtype = DTYPES[dtype_name]
    rows = []
    for name, slices, (k_h, k_w) in shapes:
        n = k_h * k_w
        gen = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(slices, n, head_dim, device=device, generator=gen, dtype=dtype) for _ in range(3))
        rel_h = torch.randn(slices, n, k_h, device=device, generator=gen, dtype=dtype)
        rel_w = torch.randn(slices, n, k_w, device=device, generator=gen, dtype=dtype)
        default = launch_config(slices, n, n, head_dim, torch.device(device))
        chosen = (default["block_m"], default["block_n"], default["num_warps"])
        for block_m, block_n, num_warps in dict.fromkeys((chosen, *configs)):
            def call(block_m=block_m, block_n=block_n, num_warps=num_warps):
                return relpos_attention_triton(q, k, v, rel_h, rel_w, block_m=block_m, block_n=block_n,
                                               num_warps=num_warps)

            rows.append({"shape": name, "head_dim": head_dim, "dtype": dtype_name, "block_m": block_m,
                         "block_n": block_n, "num_warps": num_warps,
                         "default": (block_m, block_n, num_warps) == chosen, **timer(call, warmup, reps)})
    return rows


def _add_speedups(fused: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Baseline time / fused time, eager and graph (where both were measured), on the fused row."""
    for key in ("eager_ms", "graph_ms"):
        if fused.get(key) and baseline.get(key):
            fused[f"speedup_{key[:-3]}"] = baseline[key] / fused[key]


class _CountFusedCalls(TorchDispatchMode):
    """Counts calls of the fused op that reach the dispatcher (what actually ran, whatever the guard said)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.sammed_edge.relpos_attention.default:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def count_fused_calls(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    """How many times one forward of `module` on `inputs` runs ``sammed_edge::relpos_attention``."""
    with _CountFusedCalls() as counter:
        module(*inputs)
    return counter.calls


def bench_encoder(
    encoder: torch.nn.Module, warmup: int, reps: int, *, model: str = "sam_med2d_vit_b encoder", device: str = "cuda",
    timer: Timer = time_cuda,
) -> list[dict[str, Any]]:
    """A SAM-Med2D ViT image encoder (random weights) in bf16, batch 1, with and without the kernel.

    Args:
        encoder: the image encoder (`img_size` x `img_size` input); moved to `device` in bf16, its rel-pos tables
            drawn at random.
        warmup, reps: passed to `timer`.
        model: the rows' "model".
        device, timer: as in `bench_attention`.

    Returns:
        Two rows (fused, SDPA + materialised bias): timings, fused calls per forward, peak memory (CUDA), and on the
        fused row the difference of the embeddings.
    """
    encoder = encoder.to(device, torch.bfloat16).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():  # SAM initialises the rel-pos tables to zero; a non-zero bias makes the diff meaningful
        for name, param in encoder.named_parameters():
            if "rel_pos" in name:
                param.normal_(0.0, 0.5, generator=gen)
    size = encoder.img_size
    image = torch.randn(1, 3, size, size, device=device, dtype=torch.bfloat16, generator=gen)
    cuda = torch.device(device).type == "cuda"
    modes = (("fused (triton)", None), ("sdpa + materialised bias", "1"))  # DISABLE_ENV value per mode
    previous = os.environ.get(DISABLE_ENV)
    rows, outputs = [], {}

    def use(value: str | None) -> None:
        if value is None:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = value

    try:
        with torch.inference_mode():
            for label, value in modes:
                use(value)
                outputs[label] = encoder(image).float()
                calls = count_fused_calls(encoder, image)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                timing = timer(lambda: encoder(image), warmup, reps, graph=False)
                peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
                rows.append({"model": model, "image": size, "dtype": "bf16", "method": label,
                             "fused_calls_per_forward": calls, "peak_mib": peak, **timing})
            # CUDA graphs last: a capture that fails (e.g. on a host-to-device copy) must not spoil eager numbers
            for row, (_, value) in zip(rows, modes):
                use(value)
                row.update(timer(lambda: encoder(image), 1, reps, eager=False))
    finally:
        use(previous)
    fused, plain = outputs["fused (triton)"], outputs["sdpa + materialised bias"]
    rows[0]["max_abs_diff_vs_sdpa"] = (fused - plain).abs().max().item()
    rows[0]["rel_l2_diff_vs_sdpa"] = ((fused - plain).norm() / plain.norm()).item()
    _add_speedups(rows[0], rows[1])
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _speedups(row: dict[str, Any]) -> str:
    if "speedup_eager" not in row:
        return ""
    return f"{row['speedup_eager']:.2f}x / " + (f"{row['speedup_graph']:.2f}x" if "speedup_graph" in row else "—")


def _sweep_ms(row: dict[str, Any]) -> float:
    return row.get("graph_ms") or row.get("eager_ms") or float("inf")


def _config_name(row: dict[str, Any]) -> str:
    return f"{row['block_m']}/{row['block_n']}/{row['num_warps']}"


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (one for attention, one for the encoder)."""
    env = results["environment"]
    lines = [
        "# Fused rel-pos attention: GPU benchmark", "",
        f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; batch 1; "
        f"median ms per call (eager: back-to-back calls incl. launch overhead; graph: CUDA-graph replay).", "",
        "| shape | head dim | dtype | method | eager ms | graph ms | speedup eager / graph | max abs err vs fp32 |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in results["attention"]:
        lines.append(f"| {row['shape']} | {row['head_dim']} | {row['dtype']} | {row['method']} | "
                     f"{_fmt(row['eager_ms'])} | {_fmt(row['graph_ms'])} | {_speedups(row)} | "
                     f"{_fmt(row.get('max_abs_err_vs_fp32'))} |")
    if results.get("encoder"):
        lines += ["", "| model | dtype | method | fused calls / forward | eager ms | graph ms | "
                  "speedup eager / graph | peak MiB | max abs diff vs SDPA |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in results["encoder"]:
            lines.append(f"| {row['model']} | {row['dtype']} | {row['method']} | {row['fused_calls_per_forward']} | "
                         f"{_fmt(row['eager_ms'])} | {_fmt(row['graph_ms'])} | {_speedups(row)} | "
                         f"{_fmt(row['peak_mib'])} | {_fmt(row.get('max_abs_diff_vs_sdpa'))} |")
    if results.get("sweep"):
        lines += ["", "Launch configurations (block_m / block_n / warps), graph ms (eager ms where capture failed):",
                  "", "| shape | head dim | dtype | default | ms | best | ms |", "|---|---:|---|---|---:|---|---:|"]
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in results["sweep"]:
            groups.setdefault((row["shape"], row["head_dim"], row["dtype"]), []).append(row)
        for (shape, head_dim, dtype_name), rows in groups.items():
            best = min(rows, key=_sweep_ms)
            default = next(row for row in rows if row["default"])
            lines.append(f"| {shape} | {head_dim} | {dtype_name} | {_config_name(default)} | "
                         f"{_fmt(_sweep_ms(default))} | {_config_name(best)} | {_fmt(_sweep_ms(best))} |")
    return "\n".join(lines) + "\n"
