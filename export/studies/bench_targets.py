"""One benchmark table for every build target of a model, measured in the same run against the naive export.

    python -m sammed_edge.export.studies.bench_targets --bundles out/lite_medsam-onnx-fp32 out/lite_medsam-ov-int8 ... \
        --threads 2 --markdown docs/benchmarks.md --json docs/benchmarks-targets.json

Rows:
    naive: the same weights exported the plain way (TorchScript exporter, opset 17, the model's own forward, no
        graph cleaning) and run by onnxruntime fp32 with its default session options; built here from the first
        bundle's model, or given (`--baseline`, e.g. the teacher's naive bundle when the bundles are a distilled
        student's).
    torch eager: `TorchPredictor` on the same weights.
    each bundle given: through `sammed_edge.runtime.Predictor` with the options the bundle records.
Every row runs `sammed-edge bench` in its own process, one after another (no two rows share the CPU): encoder,
click (1 point + previous mask, single mask, post-processed to 512 x 512), set_image, and the peak RSS of a fresh
process over a session of images and clicks. Box Dice comes from `sammed-edge evaluate --modes box` reports on the
whole dev set (`--dice-dir`, one `<row name>/evaluation.json` per row, e.g. from `python -m
sammed_edge.export.evaluate` for "torch eager"; `--evaluate` runs the missing bundle ones).
Then, in one more child process, the naive export and every bundle are timed in turns (`sammed-edge bench
--compare`: encoder and click, each round every bundle once in a random order): this VM's speed drifts over
minutes, which moves a whole row of the sequential table, while runs seconds apart in the same round see the same
machine, so the interleaved ratios are the ones to compare.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from sammed_edge.runtime.bench import turns_table
from sammed_edge.runtime.bundle import load_bundle, write_manifest
from sammed_edge.runtime.sysinfo import machine, tool_versions

from ..bundler import hash_entries
from ..graphs import export_decoder, export_encoder, graph_node_count
from ..models import load_model
from ..models.sam import SamModel
from .doc_sections import publish

NAIVE = "naive"
# onnxruntime's own defaults, over the runtime's per-graph memory choices (runtime/predictor.py GRAPH_DEFAULTS)
ORT_DEFAULTS = {"encoder": {"memory_pattern": True, "arena_shrinkage": False, "spinning": True}, "decoder": {"memory_arena": True}}


def naive_bundle(reference: Path, out: Path, model: SamModel | None = None) -> Path:
    """A bundle of `reference`'s model exported the plain way, run with onnxruntime's defaults.

    Copies `reference` (an onnx-fp32 bundle) and replaces its graphs with fresh TorchScript exports at opset 17
    of the model's own forward (the decoder in its "sam" form), without onnxslim; the manifest records
    onnxruntime's default options, so `Predictor.from_bundle` runs them so.
    `model` defaults to the bundle's checkpoint (or registered name).
    """
    bundle = load_bundle(reference)
    if bundle.backend != "onnxruntime":
        raise ValueError(f"the naive baseline is built from an onnxruntime bundle, not {bundle.backend}")
    manifest = json.loads(json.dumps(bundle.manifest))
    checkpoint = manifest["provenance"]["checkpoint"].get("path")
    source = checkpoint if checkpoint and Path(checkpoint).is_file() else manifest["model"]["name"]
    model = (model if model is not None else load_model(source)).eval()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    exporters = {"encoder": export_encoder, "decoder": functools.partial(export_decoder, form="sam")}
    for graph, entry in manifest["graphs"].items():
        path = exporters[graph](model, out / entry["file"], opset=17)
        entry["runtime_options"] = dict(ORT_DEFAULTS[graph])
        for key in ["onnxslim", "fusion", *(k for k in entry if k.endswith("_file") or k.endswith("_sha256"))]:
            entry.pop(key, None)  # a plain export: no cleaning, no fusion, no external-data side files
        entry.update(opset=17, nodes=graph_node_count(path))
    hash_entries(out, manifest["graphs"])
    manifest["target"]["name"] = NAIVE
    manifest["target"]["note"] = "TorchScript exporter, opset 17, no graph cleaning, onnxruntime defaults"
    write_manifest(out, manifest)
    return out


def bench_row(bundle: Path | None, threads: int, runs: int, cold_runs: int, model: str | None = None) -> dict[str, Any]:
    """`sammed-edge bench` of one bundle in a child process (or the torch eager reference when bundle is None)."""
    with tempfile.TemporaryDirectory() as tmp:
        if bundle is None:
            command = [sys.executable, "-m", "sammed_edge.export.studies.reference_bench", "--model", str(model),
                       "--runs", str(runs), "--threads", str(threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True)
            return {"runtime": json.loads(out.stdout.strip().splitlines()[-1]), "process": None}
        report = Path(tmp) / "bench.json"
        command = [sys.executable, "-m", "sammed_edge.runtime.cli", "bench", "--bundle", str(bundle), "--threads", str(threads),
                   "--runs", str(runs), "--cold-runs", str(cold_runs), "--no-reference", "--json", str(report)]
        subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(report.read_text())


def interleaved(naive: Path, bundles: list[Path], names: list[str], threads: int, rounds: int) -> dict[str, Any]:
    """`sammed-edge bench --compare` of the naive bundle and `bundles` in a child process, rows named `names`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "compare.json"
        command = [sys.executable, "-m", "sammed_edge.runtime.cli", "bench", "--bundle", str(naive), "--compare",
                   *map(str, bundles), "--threads", str(threads), "--rounds", str(rounds), "--json", str(report)]
        subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(report.read_text())
    result["rows"] = dict(zip([NAIVE, *names], result["rows"].values()))
    result["reference"] = NAIVE
    return result


def box_dice(dice_dir: Path, target: str) -> dict[str, Any] | None:
    """Overall box Dice of `<dice_dir>/<target>/evaluation.json`, or None when that report is absent."""
    path = dice_dir / target / "evaluation.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())["summary"]
    return {"box": summary["overall"]["dice"].get("box"), "masks": summary["count"]["evaluated"]}


def evaluate_box(bundle: Path, out: Path, threads: int) -> None:
    command = [sys.executable, "-m", "sammed_edge.runtime.cli", "evaluate", "--bundle", str(bundle), "--modes", "box",
               "--threads", str(threads), "--out", str(out), "--no-progress"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def markdown(result: dict[str, Any]) -> str:
    """The table of a `run` result, with ratios against the naive row."""
    rows = result["rows"]
    naive = rows[NAIVE]["runtime"]
    fp32_dice = next((row["dice"]["box"] for name, row in rows.items() if name in ("onnx-fp32", NAIVE) and row.get("dice")), None)
    info = result["machine"]
    baseline = result.get("baseline_model", result["model"])
    lines = [
        (f"Naive row: the naive export of `{baseline}`. " if baseline != result["model"] else "")
        + f"Model `{result['model']}`; machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; threads: "
        f"{result['threads']}; 512 x 512 input; {result['runs']} runs per measure (medians); tools: "
        + ", ".join(f"{k} {v}" for k, v in result["tools"].items()) + ".",
        "",
        "| target | encoder ms | vs naive | click ms | vs naive | new image + click ms | peak RSS MiB | box Dice | vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        timing = row["runtime"]
        enc, click, e2e = (timing[k]["median_ms"] for k in ("encoder", "click", "end_to_end"))
        rss = row["process"]["peak_rss_mb"] if row.get("process") else None
        dice = row.get("dice")
        rss_text = f"{rss:.0f}" if rss else "-"
        dice_text = f"{dice['box']:.2f}" if dice else "-"
        delta_text = f"{dice['box'] - fp32_dice:+.2f}" if dice and fp32_dice is not None else "-"
        lines.append(
            f"| {name} | {enc:.0f} | {naive['encoder']['median_ms'] / enc:.2f}x | {click:.1f} | "
            f"{naive['click']['median_ms'] / click:.2f}x | {e2e:.0f} | {rss_text} | {dice_text} | {delta_text} |"
        )
    lines += ["", "Where a click's time goes (same run; medians):", "",
              "| target | prompt transforms ms | decoder graph ms | upsample to 512 x 512 + threshold ms | click ms |",
              "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        timing = row["runtime"]
        if "click_decoder" in timing:
            lines.append(f"| {name} | {timing['click_prompts']['median_ms']:.2f} | {timing['click_decoder']['median_ms']:.1f} | "
                         f"{timing['click_post']['median_ms']:.2f} | {timing['click']['median_ms']:.1f} |")
    if result.get("interleaved"):
        turns = result["interleaved"]
        lines += ["", f"The same bundles timed in turns in one process ({turns['rounds']} rounds, each round every bundle's "
                  "encoder once, then every bundle's click once, in a random order; ratios: median over rounds of naive / "
                  "the row in the same round):", "", *turns_table(turns["rows"], "target", NAIVE)]
    masks = {row["dice"]["masks"] for row in rows.values() if row.get("dice")}
    lines += ["", f"Box Dice over {', '.join(map(str, sorted(masks))) or 'no'} dev-set masks (whole-mask box, `sammed-edge "
              "evaluate --modes box`); torch eager peak RSS is not measured (it is not a shipped runtime)."]
    return "\n".join(lines) + "\n"


def run(bundles: list[Path], threads: int, runs: int, cold_runs: int, dice_dir: Path, evaluate: bool, workdir: Path,
        torch_eager: bool = True, baseline: Path | None = None, rounds: int = 15) -> dict[str, Any]:
    first = load_bundle(bundles[0])
    naive = baseline if baseline is not None else naive_bundle(bundles[0], workdir / "naive-bundle")
    rows: dict[str, Any] = {NAIVE: bench_row(naive, threads, runs, cold_runs)}
    if torch_eager:
        rows["torch eager"] = bench_row(None, threads, max(runs // 2, 5), 0, model=first.manifest["model"]["name"])
    for bundle in bundles:
        target = load_bundle(bundle).manifest["target"]["name"]
        print(f"… {target}", file=sys.stderr, flush=True)
        rows[target] = bench_row(bundle, threads, runs, cold_runs)
        if evaluate and box_dice(dice_dir, target) is None:
            evaluate_box(bundle, dice_dir / target, threads)
        rows[target]["dice"] = box_dice(dice_dir, target)
    for name in (NAIVE, "torch eager"):
        if name in rows:
            rows[name]["dice"] = box_dice(dice_dir, name)
    result = {"model": first.manifest["model"]["name"], "baseline_model": load_bundle(naive).manifest["model"]["name"], "threads": threads, "runs": runs, "machine": machine(),
              "tools": tool_versions("sammed-edge", "onnxruntime", "openvino", "nncf", "numpy", "torch"), "rows": rows}
    if rounds:
        print("… all bundles in turns", file=sys.stderr, flush=True)
        names = [load_bundle(bundle).manifest["target"]["name"] for bundle in bundles]
        result["interleaved"] = interleaved(naive, bundles, names, threads, rounds)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="+", type=Path, required=True, help="bundles of one model; the first is onnx-fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--dice-dir", type=Path, default=Path("out/evaluate/targets"))
    parser.add_argument("--evaluate", action="store_true", help="run the box evaluations that --dice-dir lacks")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager row")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the interleaved comparison (0: skip it)")
    parser.add_argument("--workdir", type=Path, default=Path("out/bench"))
    parser.add_argument("--baseline", type=Path, help="a naive bundle to compare with instead of building one from the "
                        "first bundle (e.g. the teacher's, for a student)")
    parser.add_argument("--section", default="bench_targets", help="name of the measured section --markdown replaces")
    parser.add_argument("--from-json", type=Path, help="re-render an earlier run's JSON (with box Dice from --dice-dir) "
                        "instead of measuring")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        for name, row in result["rows"].items():
            row["dice"] = box_dice(args.dice_dir, name)
    else:
        result = run(args.bundles, args.threads, args.runs, args.cold_runs, args.dice_dir, args.evaluate, args.workdir,
                     torch_eager=not args.no_torch, baseline=args.baseline, rounds=args.rounds)
    publish(markdown(result), result, args.markdown, args.section, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
