"""Latency and memory benchmark of a bundle, with the PyTorch eager reference of the same model in the same run.

Measured (medians and p90 over `runs`, after warm-up, on 512 x 512 inputs):
    encoder: the encoder graph alone on a preprocessed image;
    set_image: preprocessing + encoder for a new image (cache miss);
    click: one positive click with the previous mask fed back, single mask, including post-processing to 512 x 512;
        split into click_prompts (prompt checks and transforms), click_decoder (the decoder graph alone) and
        click_post (upsampling the logits to 512 x 512 and thresholding);
    click_3: one click returning the 3 multimask candidates at full resolution;
    end_to_end: a new image, then its first click;
    cold_start: wall time from spawning a new process to its first mask (interpreter start, imports, bundle load
        with hash checks, first image, first click);
    peak_rss: peak resident memory of that process after 20 further clicks, with a new image every 5 clicks.
The PyTorch reference runs the same protocol through `TorchPredictor` in a separate process (only when torch is
installed), so this process never imports torch.

`compare_bundles` times several bundles in turns in one process instead (encoder and click as above,
`time_in_turns`): on a machine whose speed drifts, each round's runs of the bundles lie seconds apart, so their
ratios hold where the times of separate runs do not.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .processing import mask_prompt_from_logits
from .sysinfo import machine, tool_versions

BENCH_SIZE = 512
# Idle time before each run timed in turns. On the 2-core VM, a LiteMedSAM decoder run 0-20 ms after another
# onnxruntime session's run took 31-49 ms against 18-29 ms alone (the other session's worker still spinning);
# 50 ms and more after it, no difference (docs/benchmarks.md).
TURN_GAP_MS = 100.0


def bench_image(size: int = BENCH_SIZE, seed: int = 0) -> np.ndarray:
    """A size x size uint8 RGB test image: a real dev-set image resized when available, else a phantom."""
    import cv2

    from .samples import sample_images

    image = sample_images(1)[0]
    return np.ascontiguousarray(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA))


def _stats(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 2), "p90_ms": round(float(np.percentile(times, 90)), 2), "runs": len(times)}


def time_calls(fn: Callable[[], Any], runs: int, warmup: int) -> dict[str, float]:
    """Wall time of `fn()` in ms over `runs` calls after `warmup` untimed ones: median, p90, runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return _stats(times)


def time_in_turns(calls: Sequence[Callable[[], Any]], rounds: int, warmup: int = 2, gap_ms: float = TURN_GAP_MS, seed: int = 0,
                  phases: Sequence[Sequence[int]] | None = None, show_progress: bool = False) -> list[list[float]]:
    """Wall times in ms of every call once per round, in a new random order each round, `gap_ms` apart; one list
    per call.

    The order is shuffled because a fixed order gives each call a fixed predecessor, and a predecessor's worker
    threads (onnxruntime spins them after a run, OpenVINO's pool too) compete with the next run on a small machine;
    the gap (`TURN_GAP_MS`) lets them settle. `phases` (lists of call indices) splits a round into parts run one
    after another, each shuffled on its own; by default a round is one phase of every call.
    """
    from .progress import progress

    for fn in calls:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in calls]
    rng = np.random.default_rng(seed)
    for _ in progress(range(rounds), "rounds", enabled=show_progress):
        for phase in phases if phases is not None else [range(len(calls))]:
            for index in rng.permutation(list(phase)):
                time.sleep(gap_ms / 1e3)
                start = time.perf_counter()
                calls[index]()
                times[index].append((time.perf_counter() - start) * 1e3)
    return times


def _prepare(predictor: Any, image: np.ndarray, click: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Set `image` on the predictor and click once; returns (the mask prompt fed back by the timed clicks, the
    preprocessed image tensor the encoder is timed on)."""
    from . import processing

    predictor.set_image(image)
    _, _, low_res = predictor.predict(point_coords=click, point_labels=[1], best_only=True)
    return mask_prompt_from_logits(low_res[0], predictor.policy), processing.preprocess_image(image, predictor.policy)[0]


def compare_bundles(bundles: dict[str, str | Path], rounds: int = 15, threads: int | None = None, gap_ms: float = TURN_GAP_MS,
                    size: int = BENCH_SIZE, seed: int = 0) -> dict[str, Any]:
    """Encoder and click times of several bundles, measured in turns in this process (`time_in_turns`).

    Each round runs every bundle's encoder once, then every bundle's click once, each in a random order. The first
    bundle is the reference: a ratio is the median over rounds of (reference time / bundle time) in the same round.

    Returns:
        {"rounds", "threads", "reference", "rows": {name: {"encoder": stats, "click": stats, "encoder_ratio",
        "click_ratio"}}, "machine", "tools"}; stats as `time_calls` gives them.
    """
    from .predictor import Predictor

    if not bundles:
        raise ValueError("no bundles to compare")
    image = bench_image(size)
    click = np.array([[size * 0.5, size * 0.5]])
    keys, calls = [], []
    for name, path in bundles.items():
        predictor = Predictor.from_bundle(path, threads=threads)
        previous, tensor = _prepare(predictor, image, click)
        keys += [(name, "encoder"), (name, "click")]
        calls += [lambda p=predictor, t=tensor: p._encode(t),
                  lambda p=predictor, m=previous: p.predict(point_coords=click, point_labels=[1], mask_input=m, multimask_output=False)]
    phases = [range(0, len(calls), 2), range(1, len(calls), 2)]  # the encoders, then the clicks
    times = dict(zip(keys, time_in_turns(calls, rounds, gap_ms=gap_ms, seed=seed, phases=phases)))
    reference = next(iter(bundles))
    rows = {}
    for name in bundles:
        rows[name] = {kind: _stats(times[name, kind]) for kind in ("encoder", "click")}
        for kind in ("encoder", "click"):
            ratios = (r / t for r, t in zip(times[reference, kind], times[name, kind]))
            rows[name][f"{kind}_ratio"] = round(statistics.median(ratios), 3)
    return {"rounds": rounds, "threads": threads, "reference": reference, "rows": rows, "machine": machine(),
            "tools": tool_versions("sammed-edge", "onnxruntime", "openvino", "numpy")}


def turns_table(rows: dict[str, Any], label: str, reference: str) -> list[str]:
    """Markdown table lines of `compare_bundles`' rows: first column headed `label`, ratios headed `vs reference`."""
    lines = [f"| {label} | encoder ms | vs {reference} | click ms | vs {reference} |", "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['encoder']['median_ms']:.0f} | {row['encoder_ratio']:.2f}x | {row['click']['median_ms']:.1f} | "
                     f"{row['click_ratio']:.2f}x |")
    return lines


def compare_markdown(result: dict[str, Any]) -> str:
    """Markdown table of a `compare_bundles` result."""
    info = result["machine"]
    lines = [
        f"{result['rounds']} rounds in one process; machine: {info['cpu']}, {info['cores']} cores; threads: "
        f"{result['threads'] or 'backend default'}; tools: " + ", ".join(f"{k} {v}" for k, v in result["tools"].items())
        + f". `vs {result['reference']}`: median over rounds of {result['reference']}'s time / the row's in the same round.",
        "",
        *turns_table(result["rows"], "bundle", result["reference"]),
    ]
    return "\n".join(lines) + "\n"


def measure_predictor(predictor: Any, runs: int = 20, warmup: int = 3, size: int = BENCH_SIZE) -> dict[str, dict[str, float]]:
    """Time a predictor (runtime `Predictor` or `TorchPredictor`) with the protocol of this module's docstring."""
    from . import processing

    image = bench_image(size)
    images = [image, np.ascontiguousarray(image[::-1]), np.ascontiguousarray(image[:, ::-1])]
    click = np.array([[size * 0.5, size * 0.5]])
    previous, tensor = _prepare(predictor, image, click)
    counter = iter(range(1 << 30))

    def new_image() -> None:
        if hasattr(predictor, "clear_cache"):
            predictor.clear_cache()
        predictor.set_image(images[next(counter) % len(images)])

    def end_to_end() -> None:
        new_image()
        predictor.predict(point_coords=click, point_labels=[1], multimask_output=False)

    results = {
        "encoder": time_calls(lambda: predictor._encode(tensor), runs, warmup),
        "set_image": time_calls(new_image, runs, warmup),
        "end_to_end": time_calls(end_to_end, runs, warmup),
    }
    predictor.set_image(image)
    results["click"] = time_calls(lambda: predictor.predict(point_coords=click, point_labels=[1], mask_input=previous, multimask_output=False), runs * 3, warmup)
    embedding, geometry = predictor._current()
    prompts = processing.check_prompts(geometry, predictor.policy, click, [1], None, previous)
    inputs = processing.decoder_inputs(prompts, geometry, predictor.policy)
    low, _ = predictor._decode(embedding, inputs, False)
    low = np.asarray(low, dtype=np.float32)
    results["click_prompts"] = time_calls(lambda: processing.decoder_inputs(
        processing.check_prompts(geometry, predictor.policy, click, [1], None, previous), geometry, predictor.policy), runs * 3, warmup)
    results["click_decoder"] = time_calls(lambda: predictor._decode(embedding, inputs, False), runs * 3, warmup)
    results["click_post"] = time_calls(lambda: processing.postprocess_logits(low, geometry, predictor.policy,
                                                                          threshold=predictor.policy.mask_threshold), runs * 3, warmup)
    results["click_3"] = time_calls(lambda: predictor.predict(point_coords=click, point_labels=[1]), runs * 3, warmup)
    return results


_COLD_START = """
import time, json, sys
spawned = float(sys.argv[5])
start = time.perf_counter()
import numpy as np
from sammed_edge.runtime import Predictor
from sammed_edge.runtime.sysinfo import peak_rss_mb
image = np.load(sys.argv[2])
predictor = Predictor.from_bundle(sys.argv[1], threads=int(sys.argv[3]) if sys.argv[3] != "0" else None)
predictor.set_image(image)
click = [[image.shape[1] / 2, image.shape[0] / 2]]
masks, _, _ = predictor.predict(point_coords=click, point_labels=[1], multimask_output=False)
first_mask = time.time() - spawned
in_process = time.perf_counter() - start
rng = np.random.default_rng(0)
for i in range(int(sys.argv[4])):
    if i % 5 == 4:  # a new image now and then, as in a session
        predictor.set_image(rng.integers(0, 256, image.shape, dtype=np.uint8))
    predictor.predict(point_coords=click, point_labels=[1])
print(json.dumps({"first_mask_s": first_mask, "in_process_s": in_process, "peak_rss_mb": peak_rss_mb(),
                  "torch_loaded": "torch" in sys.modules}))
"""


def cold_start(bundle: str | Path, image: np.ndarray, threads: int | None, runs: int = 5, clicks: int = 20, workdir: Path | None = None) -> dict[str, Any]:
    """Fresh processes that load the bundle and segment `image`: wall time from spawn to the first mask, and the
    peak RSS after `clicks` further clicks (with a new image every 5 clicks)."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        image_path = Path(tmp) / "image.npy"
        np.save(image_path, image)
        firsts, inner, rss, torch_loaded = [], [], [], False
        for _ in range(runs):
            command = [sys.executable, "-c", _COLD_START, str(bundle), str(image_path), str(threads or 0), str(clicks)]
            out = subprocess.run(command + [repr(time.time())], capture_output=True, text=True, check=True)
            report = json.loads(out.stdout.strip().splitlines()[-1])
            firsts.append(report["first_mask_s"])
            inner.append(report["in_process_s"])
            rss.append(report["peak_rss_mb"])
            torch_loaded |= report["torch_loaded"]
    return {
        "cold_start_s": round(statistics.median(firsts), 3), "cold_start_p90_s": round(float(np.percentile(firsts, 90)), 3),
        "in_process_first_mask_s": round(statistics.median(inner), 3),
        "peak_rss_mb": max(rss) if all(r is not None for r in rss) else None, "runs": runs, "torch_loaded": torch_loaded,
    }


def torch_reference(manifest: dict[str, Any], runs: int, threads: int | None) -> dict[str, Any] | None:
    """The PyTorch eager reference of the bundle's model, measured in a child process; None without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("sammed_edge.export") is None:
        return None
    checkpoint = manifest["provenance"]["checkpoint"].get("path")
    source = manifest["model"]["name"] if not checkpoint or not Path(checkpoint).is_file() else checkpoint
    command = [sys.executable, "-m", "sammed_edge.export.studies.reference_bench", "--model", str(source), "--runs", str(runs)]
    if threads:
        command += ["--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_benchmark(bundle: str | Path, runs: int = 20, threads: int | None = None, reference: bool = True, cold_runs: int = 5) -> dict[str, Any]:
    """Benchmark a bundle (and the PyTorch reference); returns a JSON-ready report."""
    from .predictor import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    manifest = predictor.bundle.manifest
    result: dict[str, Any] = {
        "bundle": str(bundle), "model": manifest["model"]["name"], "family": manifest["model"]["family"],
        "target": manifest["target"]["name"], "threads": threads, "image_size": BENCH_SIZE,
        "machine": machine(), "tools": tool_versions("sammed-edge", "onnxruntime", "numpy", "opencv-python-headless", "torch"),
        "runtime": measure_predictor(predictor, runs=runs),
    }
    del predictor
    result["process"] = cold_start(bundle, bench_image(), threads, runs=cold_runs)
    result["torch_eager"] = torch_reference(manifest, runs=max(runs // 2, 5), threads=threads) if reference else None
    return result


def markdown(result: dict[str, Any]) -> str:
    """Markdown table of a benchmark report."""
    machine_info = result["machine"]
    ref = result.get("torch_eager") or {}
    lines = [
        f"### {result['model']} ({result['family']}), target `{result['target']}`",
        "",
        f"Machine: {machine_info['cpu']}, {machine_info['cores']} cores, {machine_info['memory_gb']} GB; threads: "
        f"{result['threads'] or 'backend default'}; {result['image_size']}x{result['image_size']} input; tools: "
        + ", ".join(f"{k} {v}" for k, v in result["tools"].items()) + ".",
        "",
        "| measure | runtime median ms | p90 ms | torch eager median ms | torch / runtime |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, label in (("encoder", "encoder graph"), ("set_image", "set_image (new image)"), ("click", "click (1 point + previous mask, 1 mask)"),
                       ("click_3", "click (1 point, 3 candidates)"), ("end_to_end", "new image + first click")):
        ours = result["runtime"][key]
        theirs = ref.get(key) if isinstance(ref, dict) else None
        ratio = f"{theirs['median_ms'] / ours['median_ms']:.2f}x" if theirs else "-"
        lines.append(f"| {label} | {ours['median_ms']:.1f} | {ours['p90_ms']:.1f} | {theirs['median_ms']:.1f} | {ratio} |" if theirs
                     else f"| {label} | {ours['median_ms']:.1f} | {ours['p90_ms']:.1f} | - | - |")
    process = result["process"]
    lines += [
        "",
        f"Cold start (new process to first mask): median {process['cold_start_s']:.2f} s, p90 {process['cold_start_p90_s']:.2f} s "
        f"over {process['runs']} processes ({process['in_process_first_mask_s']:.2f} s of it after the interpreter's start); "
        f"peak RSS {process['peak_rss_mb']} MiB; torch imported: {'yes' if process['torch_loaded'] else 'no'}.",
    ]
    if isinstance(ref, dict) and ref.get("error"):
        lines.append(f"PyTorch reference failed: {ref['error']}")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], markdown_path: Path | None, json_path: Path | None) -> None:
    """Write the report as JSON and/or replace this model/target's section of a Markdown file."""
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        section = markdown(result)
        header = section.splitlines()[0]
        text = markdown_path.read_text() if markdown_path.is_file() else "# Benchmarks\n\nWritten by `sammed-edge bench`.\n\n"
        if header in text:
            start = text.index(header)
            # the section runs to the next heading of its level or above
            following = re.search(r"\n#{1,3} ", text[start + 1 :])
            end = start + 1 + following.start() if following else -1
            text = text[:start] + section + ("\n" + text[end + 1 :] if end != -1 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        markdown_path.write_text(text)
