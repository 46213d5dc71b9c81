"""Where a bundle's graphs spend their time in OpenVINO: per layer type and implementation, and the slowest layers.

    python -m sammed_edge.export.studies.profile_openvino --bundle out/lite_medsam-ov-int8 [--graphs encoder decoder]
        [--runs 5] [--threads 2] [--top 15] [--json FILE]

Loads the bundle through the runtime's OpenVINO backend with the options the bundle records (an onnx-* bundle's
ONNX graphs run through OpenVINO too) and OpenVINO's per-layer counters on, runs the encoder on a preprocessed
512 x 512 image and the decoder on one click with the previous mask fed back (what the benchmark times), and
prints, averaged over `--runs` runs after a warm-up: the run's median wall time, the layers' time summed by
(layer type, implementation), and the slowest layers. Implementations named "ref..." or "unknown..." are
OpenVINO's generic fallbacks, usually where a graph leaves time on the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime import Predictor, processing
from sammed_edge.runtime.bench import bench_image
from sammed_edge.runtime.sysinfo import cpu_name, tool_versions

GRAPHS = ("encoder", "decoder")


def profile_bundle(bundle: str | Path, graphs: tuple[str, ...] = GRAPHS, runs: int = 5, threads: int | None = 2) -> dict[str, Any]:
    """Per-layer OpenVINO timings of `bundle`'s graphs.

    Returns:
        {graph: {"median_ms", "layers_ms" (sum of the layers, mean per run), "by_kind": [{type, implementation,
        ms, count}], "layers": [{name, type, implementation, ms}]}} with ms averaged over `runs`, largest first.
    """
    options = {"perf_count": True}
    predictor = Predictor.from_bundle(bundle, backend="openvino", threads=threads, encoder_options=options,
                                      decoder_options=options, cache_size=1)
    image = bench_image()
    tensor, _ = processing.preprocess_image(image, predictor.policy)
    click = np.array([[image.shape[1] * 0.5, image.shape[0] * 0.5]])
    predictor.set_image(image)
    _, _, low_res = predictor.predict(point_coords=click, point_labels=[1], best_only=True)
    embedding, geometry = predictor._current()
    previous = processing.mask_prompt_from_logits(low_res[0], predictor.policy)
    prompts = processing.check_prompts(geometry, predictor.policy, click, [1], None, previous)
    calls = {
        "encoder": (predictor.encoder, lambda: predictor._encode(tensor)),
        "decoder": (predictor.decoder, lambda: predictor._decode(embedding, processing.decoder_inputs(
            prompts, geometry, predictor.policy), False)),
    }
    report = {}
    for graph in graphs:
        backend, call = calls[graph]
        call()  # warm-up
        walls, per_layer = [], defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(runs):
            start = time.perf_counter()
            call()
            walls.append((time.perf_counter() - start) * 1e3)
            for layer in backend.layer_profile():
                per_layer[layer["name"]] += layer["ms"] / runs
                kinds[layer["name"]] = (layer["type"], layer["implementation"])
        by_kind: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
        for name, ms in per_layer.items():
            by_kind[kinds[name]][0] += ms
            by_kind[kinds[name]][1] += 1
        report[graph] = {
            "median_ms": statistics.median(walls),
            "layers_ms": sum(per_layer.values()),
            "by_kind": sorted(({"type": t, "implementation": i, "ms": ms, "count": n}
                               for (t, i), (ms, n) in by_kind.items()), key=lambda row: -row["ms"]),
            "layers": sorted(({"name": name, "type": kinds[name][0], "implementation": kinds[name][1], "ms": ms}
                              for name, ms in per_layer.items()), key=lambda row: -row["ms"]),
        }
    return report


def markdown(report: dict[str, Any], top: int = 15) -> str:
    """The report as Markdown tables: by (type, implementation), then the `top` slowest layers, per graph."""
    lines = []
    for graph, data in report.items():
        lines += [f"**{graph}**: median run {data['median_ms']:.1f} ms; layers sum to {data['layers_ms']:.1f} ms", "",
                  "| layer type | implementation | layers | ms | share |", "|---|---|---:|---:|---:|"]
        for row in data["by_kind"]:
            if row["ms"] >= 0.05:
                lines.append(f"| {row['type']} | {row['implementation']} | {row['count']} | {row['ms']:.2f} | "
                             f"{100 * row['ms'] / data['layers_ms']:.1f} % |")
        lines += ["", "| slowest layers | type | implementation | ms |", "|---|---|---|---:|"]
        for row in data["layers"][:top]:
            lines.append(f"| `{row['name']}` | {row['type']} | {row['implementation']} | {row['ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--graphs", nargs="+", choices=GRAPHS, default=list(GRAPHS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="inference threads (0: OpenVINO's choice)")
    parser.add_argument("--top", type=int, default=15, help="slowest layers listed per graph")
    parser.add_argument("--json", type=Path, help="write the whole report as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    report = profile_bundle(args.bundle, tuple(args.graphs), runs=args.runs, threads=args.threads or None)
    versions = tool_versions("openvino")
    print(f"Bundle {args.bundle}; {cpu_name()}, {args.threads or 'default'} threads; {args.runs} runs; "
          f"openvino {versions.get('openvino', '?')}\n")
    print(markdown(report, args.top))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
