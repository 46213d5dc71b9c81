"""GPU benchmark of the fused rel-pos attention kernel against scaled_dot_product_attention with the bias materialised.

    python -m sammed_edge.export.studies.relpos_bench --out out/bench-relpos

Batch 1. Attention alone at SAM-Med2D's shapes (4 windows of 14 x 14 tokens, a 16 x 16 global block; ViT-B's
12 heads, head dims 64 and the students' 32 and 16), then the whole SAM-Med2D ViT-B image encoder (random weights)
in bf16 with and without the kernel. Times are medians over CUDA events, eager (back-to-back calls, launch overhead
included) and as CUDA-graph replays (device time); a sweep of the kernel's launch configurations (first dtype)
gives data for tuning `launch_config`. Writes relpos-bench.json and relpos-bench.md under --out; exits 1 when a
fused output is outside tolerance. A few minutes on an H100. The measurements are `kernels.triton.bench`'s; this
study builds the encoder they are given, so that kernels/ imports no model code.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

from sammed_edge.kernels.triton import relpos_attention_fallback_reason
from sammed_edge.kernels.triton.bench import (
    DTYPES,
    TOLERANCE,
    bench_attention,
    bench_encoder,
    markdown,
    sweep_launch_configs,
)

from ..models import build_model

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench-relpos"), help="folder for the JSON and Markdown")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--head-dims", nargs="+", type=int, default=[64, 32, 16])
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--skip-encoder", action="store_true", help="attention shapes only")
    parser.add_argument("--no-sweep", action="store_true", help="skip the launch-configuration sweep")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        logger.error("no CUDA device: this benchmark measures the GPU kernel")
        return 2
    for dtype_name in args.dtypes:
        for head_dim in args.head_dims:
            probe = torch.empty(1, 196, head_dim, device="cuda", dtype=DTYPES[dtype_name])
            reason = relpos_attention_fallback_reason(probe)
            if reason is not None:
                logger.error("the fused kernel does not apply to %s, head dim %d: %s", dtype_name, head_dim, reason)
                return 2

    import triton

    results: dict[str, Any] = {
        "environment": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                        "cuda": torch.version.cuda, "python": platform.python_version()},
        "settings": {"warmup": args.warmup, "reps": args.reps, "batch": 1},
        "attention": [],
        "sweep": [],
        "encoder": [],
    }
    jobs = [(d, h) for d in args.dtypes for h in args.head_dims]
    for index, (dtype_name, head_dim) in enumerate(jobs, 1):
        logger.info("[%d/%d] attention, %s, head dim %d", index, len(jobs), dtype_name, head_dim)
        results["attention"] += bench_attention(dtype_name, head_dim, args.warmup, args.reps)
    if not args.no_sweep:
        for head_dim in args.head_dims:
            logger.info("launch-configuration sweep, %s, head dim %d", args.dtypes[0], head_dim)
            results["sweep"] += sweep_launch_configs(args.dtypes[0], head_dim, args.warmup // 2, args.reps)
    if not args.skip_encoder:
        logger.info("SAM-Med2D ViT-B encoder, bf16 ...")
        encoder = build_model("sam_med2d_vit_b").image_encoder
        results["encoder"] = bench_encoder(encoder, max(3, args.warmup // 4), max(5, args.reps // 5))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "relpos-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "relpos-bench.md").write_text(table)
    print(table)
    logger.info("wrote %s and %s", args.out / "relpos-bench.json", args.out / "relpos-bench.md")
    wrong = [row for row in results["attention"] if row["method"].startswith("fused")
             and row["max_abs_err_vs_fp32"] > TOLERANCE[row["dtype"]]]
    for row in wrong:
        logger.error("fused output off: %s, head dim %d, %s: max abs error %.3g > %.3g", row["shape"],
                     row["head_dim"], row["dtype"], row["max_abs_err_vs_fp32"], TOLERANCE[row["dtype"]])
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
