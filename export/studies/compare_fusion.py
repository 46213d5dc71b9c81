"""Measure whether fusing attention makes a bundle's graphs faster on onnxruntime and OpenVINO (CPU).

    python -m sammed_edge.export.studies.compare_fusion --bundle out/lite_medsam-onnx-fp32 [--rounds 30] [--out docs/fusion.md]

Fuses the bundle's encoder and decoder for each backend with each fused operator (onnxruntime's
com.microsoft.MultiHeadAttention, the standard Attention of opset 23), checks every fused graph against the
unfused one on the same backend (real image, a mix of prompts; 1e-4 relative), then times all variants interleaved
in one process: each round runs every candidate once, in a shuffled order, so drifts of the machine hit all alike.
The table reports medians, p90 and the median of the per-round ratio fused / unfused with a bootstrap interval;
fusion is recommended unless it is slower beyond doubt (the interval lies above 1 + `--equal-within`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sammed_edge.kernels.onnx import BACKENDS, OPS, fuse_attention, runner, verify_fusion
from sammed_edge.runtime import processing
from sammed_edge.runtime.bench import TURN_GAP_MS, time_in_turns
from sammed_edge.runtime.bundle import load_bundle
from sammed_edge.runtime.samples import sample_images
from sammed_edge.runtime.sysinfo import cpu_name, machine, tool_versions

from ..graphs import prompt_cases
from .doc_sections import publish

log = logging.getLogger("sammed_edge.compare_fusion")
GRAPHS = ("encoder", "decoder")
RTOL = 1e-4


@dataclass
class Candidate:
    graph: str
    backend: str
    variant: str  # "unfused" or the fused operator
    run: Callable[[dict[str, np.ndarray]], Any]
    feeds: dict[str, np.ndarray]
    fused_nodes: int = 0
    max_relative_diff: float = 0.0
    times: list[float] = field(default_factory=list)


def bundle_feeds(bundle_path: Path, images: int = 1) -> tuple[dict[str, list[dict[str, np.ndarray]]], Any]:
    """Realistic inputs: preprocessed images for the encoder; their embeddings (unfused encoder, onnxruntime) with
    `graphs.prompt_cases` for the decoder. Returns ({graph: [feeds, ...]}, bundle)."""
    import onnx

    bundle = load_bundle(bundle_path)
    policy = bundle.policy
    encode = runner(onnx.load(str(bundle.path("encoder"))), "onnxruntime")
    feeds: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "decoder": []}
    for image in sample_images(images):
        tensor, geometry = processing.preprocess_image(image, policy)
        encoder_feeds = {bundle.contract("encoder").input_names[0]: tensor}
        feeds["encoder"].append(encoder_feeds)
        embedding = next(iter(encode(encoder_feeds).values()))
        for prompts in prompt_cases(geometry.original_size, policy):
            case = processing.decoder_inputs(prompts, geometry, policy)
            case["image_embeddings"] = embedding
            feeds["decoder"].append(case)
    return feeds, bundle


def build_candidates(bundle_path: Path, backends: list[str], ops: list[str], threads: int,
                     graphs: tuple[str, ...] = GRAPHS) -> list[Candidate]:
    """Unfused and fused variants of both graphs on every backend, each fused one checked before it is timed."""
    import onnx

    feeds, bundle = bundle_feeds(bundle_path)
    candidates = []
    for graph in graphs:
        unfused = onnx.load(str(bundle.path(graph)))
        # time the single-click decoder case (prompt_cases' second entry); check on all of them
        timed = feeds[graph][min(1, len(feeds[graph]) - 1)]
        for backend in backends:
            candidates.append(Candidate(graph, backend, "unfused", runner(unfused, backend, threads), timed))
            for op in ops:
                fused, counts = fuse_attention(unfused, target=backend, op=op)
                report = verify_fusion(unfused, fused, feeds[graph], backend=backend, rtol=RTOL)
                worst = max(row["relative"] for row in report.values())
                log.info("%s %s %s: %s fused, max relative difference %.2e", graph, backend, op, sum(counts.values()), worst)
                candidates.append(Candidate(graph, backend, op, runner(fused, backend, threads), timed,
                                            fused_nodes=sum(counts.values()), max_relative_diff=worst))
    return candidates


def measure(candidates: list[Candidate], rounds: int, warmup: int = 2, gap_ms: float = TURN_GAP_MS, seed: int = 0) -> None:
    """Time every candidate once per round in turns (`runtime.bench.time_in_turns`: a new random order each round,
    `gap_ms` apart), appending to each candidate's `times`."""
    times = time_in_turns([lambda c=cand: c.run(c.feeds) for cand in candidates], rounds, warmup, gap_ms, seed, show_progress=True)
    for cand, measured in zip(candidates, times):
        cand.times.extend(measured)


def median_interval(values: list[float], level: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the median."""
    data = np.asarray(values)
    picks = np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))
    medians = np.median(data[picks], axis=1)
    return float(np.quantile(medians, (1 - level) / 2)), float(np.quantile(medians, (1 + level) / 2))


def summarize(candidates: list[Candidate], equal_within: float) -> list[dict[str, Any]]:
    """One row per candidate: medians, p90 and the per-round ratio to the unfused graph of its backend (median and
    its 95 % interval). A fused variant is kept unless it is slower beyond doubt: unless the whole interval lies
    above 1 + `equal_within`."""
    rows = []
    for cand in candidates:
        base = next(c for c in candidates if (c.graph, c.backend, c.variant) == (cand.graph, cand.backend, "unfused"))
        ratios = [t / b for t, b in zip(cand.times, base.times)]
        low, high = median_interval(ratios)
        rows.append({
            "graph": cand.graph, "backend": cand.backend, "variant": cand.variant, "fused_nodes": cand.fused_nodes,
            "max_relative_diff": cand.max_relative_diff, "median_ms": statistics.median(cand.times),
            "p90_ms": float(np.percentile(cand.times, 90)), "min_ms": min(cand.times),
            "ratio": statistics.median(ratios), "ratio_low": low, "ratio_high": high,
            "faster_rounds": sum(r < 1.0 for r in ratios) / len(ratios),
            "keep": cand.variant != "unfused" and low <= 1.0 + equal_within,
        })
    return rows


def decisions(rows: list[dict[str, Any]]) -> dict[str, dict[str, str | None]]:
    """{backend: {graph: the fused operator with the best ratio among those kept, or None for the unfused graph}}."""
    chosen: dict[str, dict[str, str | None]] = {}
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for graph in dict.fromkeys(r["graph"] for r in rows):
            kept = [r for r in rows if (r["backend"], r["graph"]) == (backend, graph) and r["keep"]]
            chosen.setdefault(backend, {})[graph] = min(kept, key=lambda r: r["ratio"])["variant"] if kept else None
    return chosen


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    versions = tool_versions("onnxruntime", "openvino", "onnx")
    info = machine()
    lines = [
        "# Attention fusion: measured",
        "",
        f"Measured by `python -m sammed_edge.export.studies.compare_fusion {command}` on "
        f"{info['cpu']} ({info['cores']} cores), {args.threads} threads per session, {args.rounds} interleaved rounds; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". OpenVINO runs with `INFERENCE_PRECISION_HINT=f32`.",
        "",
        "`ratio` is the median over rounds of (this variant's time / the unfused graph's time in the same round) on the "
        "same backend, with its 95 % bootstrap interval; `faster` the share of rounds in which it beat the unfused "
        "graph; `max rel diff` the largest |fused - unfused| / max |unfused| over all outputs and checked inputs "
        "(1 image; 5 prompt sets for the decoder).",
        "",
        "| graph | backend | variant | fused nodes | max rel diff | median ms | p90 ms | min ms | ratio (95 % interval) | faster |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fused = r["variant"] != "unfused"
        diff, faster = (f"{r['max_relative_diff']:.1e}", f"{r['faster_rounds']:.0%}") if fused else ("", "")
        lines.append(f"| {r['graph']} | {r['backend']} | {r['variant']} | {r['fused_nodes']} | {diff} | "
                     f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['min_ms']:.1f} | "
                     + (f"{r['ratio']:.3f} ({r['ratio_low']:.3f}-{r['ratio_high']:.3f})" if fused else "1") + f" | {faster} |")
    lines += ["", f"Verdict (a fused variant is kept unless its whole ratio interval lies above {1 + args.equal_within:.2f}; "
              "among those kept, the lowest median ratio wins):", ""]
    for backend, graphs in decisions(rows).items():
        for graph, op in graphs.items():
            lines.append(f"- {backend} {graph}: " + (f"fuse with {op}" if op else "keep the unfused graph"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder with encoder.onnx and decoder.onnx")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="fused operators to try")
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS))
    parser.add_argument("--gap-ms", type=float, default=TURN_GAP_MS, help="idle time before each timed run")
    parser.add_argument("--equal-within", type=float, default=0.02, help="ratio margin still counted as equal")
    parser.add_argument("--out", type=Path, help="write the Markdown table here")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    candidates = build_candidates(args.bundle, args.backends, args.ops, args.threads, tuple(args.graphs))
    measure(candidates, args.rounds, gap_ms=args.gap_ms)
    rows = summarize(candidates, args.equal_within)
    text = markdown(rows, args, shlex.join(sys.argv[1:] if argv is None else argv))
    publish(text, {"machine": machine(), "cpu": cpu_name(), "rows": rows, "decisions": decisions(rows)}, args.out,
            "compare_fusion", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
