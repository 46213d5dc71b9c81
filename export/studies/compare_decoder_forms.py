"""Measure the decoder graph's two forms (`graphs.DECODER_FORMS`) against each other on every CPU backend.

    python -m sammed_edge.export.studies.compare_decoder_forms [--model lite_medsam] [--clicks 1 5 10] [--rounds 20]
        [--markdown docs/exporters.md] [--json FILE]

Exports the decoder as the build writes it (TorchScript exporter, onnxslim, attention fused where `kernels.onnx`
recommends it for the backend) in the "sam" form (the model's own forward) and the "factored" form
(`factored_decoder.py`), checks on each backend that the two agree on a real image's embedding, then times both
interleaved in one process (each round runs every candidate once) for clicks with the previous mask fed back, as
`sammed-edge bench` times a click (`compare_fusion.measure`: a shuffled order each round, runs `runtime.bench.TURN_GAP_MS` apart). Backends: onnxruntime fp32, OpenVINO fp32 and, where the CPU has it, bf16.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from sammed_edge.kernels.onnx import fuse_attention, recommended
from sammed_edge.runtime import processing
from sammed_edge.runtime.backends import load_backend
from sammed_edge.runtime.samples import sample_images
from sammed_edge.runtime.sysinfo import cpu_name, tool_versions

from .. import graphs
from ..models import list_models, load_model
from .compare_fusion import measure
from .doc_sections import command_line, publish

log = logging.getLogger("sammed_edge.compare_decoder_forms")
BACKENDS = {"onnxruntime fp32": ("onnxruntime", {}), "openvino fp32": ("openvino", {"inference_precision": "fp32"}),
            "openvino bf16": ("openvino", {"inference_precision": "bf16"})}


def available_backends() -> list[str]:
    """The BACKENDS rows this machine can run (OpenVINO installed; bf16 only where the CPU computes in it)."""
    import importlib.util

    from sammed_edge.runtime.backends.openvino import cpu_has_bf16

    if importlib.util.find_spec("openvino") is None:
        return ["onnxruntime fp32"]
    return ["onnxruntime fp32", "openvino fp32"] + (["openvino bf16"] if cpu_has_bf16() else [])


def click_feeds(model: Any, clicks: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Decoder inputs for `clicks` points (alternately positive and negative) and a fed-back mask, on the
    embedding of a real image."""
    policy = model.processing_policy()
    image = sample_images(1)[0]
    tensor, geometry = processing.preprocess_image(image, policy)
    with torch.inference_mode():
        embedding = model.encode(torch.from_numpy(tensor)).numpy()
        previous = np.random.default_rng(seed).normal(0, 3, (policy.low_res_size, policy.low_res_size)).astype(np.float32)
    height, width = geometry.original_size
    rng = np.random.default_rng(seed)
    coords = np.stack([rng.uniform(0, width, clicks), rng.uniform(0, height, clicks)], axis=1)
    labels = (np.arange(clicks) % 2 == 0).astype(np.int64)
    prompts = processing.check_prompts(geometry, policy, coords, labels,
                                       mask_input=processing.mask_prompt_from_logits(previous, policy))
    feeds = processing.decoder_inputs(prompts, geometry, policy)
    feeds["image_embeddings"] = embedding
    return feeds


def export_forms(model: Any, folder: Path) -> dict[tuple[str, str], Path]:
    """{(form, backend SDK): graph path} as the build writes them."""
    import onnx

    paths = {}
    for form in graphs.DECODER_FORMS:
        plain = graphs.export_decoder(model, folder / f"{form}.onnx", form=form)
        graphs.slim(plain)
        for sdk in ("onnxruntime", "openvino"):
            op = recommended(sdk, "decoder")
            if op is None:
                paths[form, sdk] = plain
                continue
            fused, _ = fuse_attention(onnx.load(str(plain)), target=sdk, op=op)
            paths[form, sdk] = folder / f"{form}-{sdk}.onnx"
            onnx.save(fused, str(paths[form, sdk]))
    return paths


def compare(model: Any, clicks: list[int], rounds: int, threads: int, backends: list[str]) -> list[dict[str, Any]]:
    """Rows {backend, clicks, tokens, form, median_ms, p90_ms, ratio (factored / sam, median of per-round ratios),
    max_relative_diff}."""
    contract = graphs.decoder_contract(model)
    feeds = {n: click_feeds(model, n) for n in clicks}
    candidates = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_forms(model, Path(tmp))
        for name in backends:
            sdk, options = BACKENDS[name]
            runners = {form: load_backend(sdk, paths[form, sdk], contract, threads=threads, **options)
                       for form in graphs.DECODER_FORMS}
            for n in clicks:
                outputs = {form: runner.run(feeds[n]) for form, runner in runners.items()}
                ref = outputs["sam"]["low_res_masks"]
                diff = float(np.abs(outputs["factored"]["low_res_masks"] - ref).max() / np.abs(ref).max())
                for form, runner in runners.items():
                    tokens = feeds[n]["point_coords"].shape[1] + model.mask_decoder.num_mask_tokens + 1
                    candidates.append(dict(backend=name, clicks=n, tokens=tokens, form=form, run=runner.run, feeds=feeds[n],
                                           diff=diff, times=[]))
    measure([SimpleNamespace(**cand) for cand in candidates], rounds)  # shuffled order, runs apart (TURN_GAP_MS)
    rows = []
    for cand in candidates:
        base = next(c for c in candidates if c["backend"] == cand["backend"] and c["clicks"] == cand["clicks"] and c["form"] == "sam")
        ratio = statistics.median(t / b for t, b in zip(cand["times"], base["times"]))
        rows.append({k: cand[k] for k in ("backend", "clicks", "tokens", "form")} | {
            "median_ms": statistics.median(cand["times"]), "p90_ms": float(np.percentile(cand["times"], 90)),
            "ratio": ratio, "max_relative_diff": cand["diff"]})
    return rows


def markdown(rows: list[dict[str, Any]], command: str, model: str, threads: int, rounds: int) -> str:
    versions = tool_versions("onnxruntime", "openvino", "torch")
    lines = [
        f"Measured by `{command}` on {cpu_name()}, {threads} threads, {rounds} interleaved rounds; model `{model}`; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". A click: the points so far and the previous mask "
        "fed back; tokens = 4 mask tokens + the IoU token + the points + one padding point. `ratio`: median over "
        "rounds of factored / sam in the same round; `max rel diff`: largest |factored - sam| / max |sam| of the "
        "mask logits on that backend.",
        "",
        "| backend | clicks | tokens | sam ms | factored ms | ratio | max rel diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["form"] != "factored":
            continue
        sam = next(r for r in rows if r["backend"] == row["backend"] and r["clicks"] == row["clicks"] and r["form"] == "sam")
        lines.append(f"| {row['backend']} | {row['clicks']} | {row['tokens']} | {sam['median_ms']:.1f} | {row['median_ms']:.1f} | "
                     f"{row['ratio']:.2f} | {row['max_relative_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam", choices=list_models())
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", choices=sorted(BACKENDS), help="default: every one this machine runs")
    parser.add_argument("--markdown", type=Path, help="write the table into this file's decoder_forms section")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = compare(model, args.clicks, args.rounds, args.threads, args.backends or available_backends())
    text = markdown(rows, command_line("sammed_edge.export.studies.compare_decoder_forms", argv), args.model, args.threads, args.rounds)
    publish(text, rows, args.markdown, "decoder_forms", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
