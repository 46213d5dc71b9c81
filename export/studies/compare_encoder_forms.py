"""Measure the encoder graph's two forms (`graphs.ENCODER_FORMS`) on every OpenVINO target, as the build makes them.

    python -m sammed_edge.export.studies.compare_encoder_forms [--model lite_medsam] [--targets ov-int8 ov-bf16 ov-fp32]
        [--rounds 20] [--calib-images 32] [--markdown docs/exporters.md] [--json FILE]

Exports the encoder in the "model" form (the model's own forward) and the "tokens" form (`token_encoder.py`) and
turns each into the target's IR the way the build does: int8 by NNCF on the same calibration images
(`quantize.quantize_openvino`); bf16 / fp32 converted, with the attention fused where `kernels.onnx` recommends
it for OpenVINO and its pattern matches (it does in both forms). Every IR is loaded
through the runtime's OpenVINO backend with its target's runtime options, and all are timed interleaved in one
process (`compare_fusion.measure`: a shuffled order each round, runs `runtime.bench.TURN_GAP_MS` apart). Also reported: the Transpose,
Reorder and matrix-product layers OpenVINO executes in each, and how far each embedding lies from the fp32 ONNX
graph's on calibration images (the accuracy gate judges a built bundle on held-out masks).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch

from sammed_edge.runtime import contract as io_contract
from sammed_edge.runtime import processing
from sammed_edge.runtime.backends import load_backend
from sammed_edge.runtime.sysinfo import cpu_name, tool_versions

from .. import graphs, quantize
from ..bundler import TARGETS
from ..calibration import calibration_set
from ..models import list_models, load_model
from .compare_fusion import measure
from .doc_sections import command_line, publish

log = logging.getLogger("sammed_edge.compare_encoder_forms")
OPENVINO_TARGETS = ("ov-int8", "ov-bf16", "ov-fp32")
MATRIX_PRODUCTS = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul")


def executed_layers(compiled: Any) -> Counter:
    """Layer types of a compiled OpenVINO model as the plugin runs them (after its fusions)."""
    return Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops())


def _ir(target: str, form: str, onnx_path: Path, tensors: list[np.ndarray]) -> tuple[Path, bool]:
    """The target's IR of one exported encoder, next to it; returns (path, attention fused)."""
    import onnx

    from sammed_edge.kernels.onnx import fuse_attention, fusion_guard, recommended

    xml = onnx_path.with_name(f"{target}-{form}.xml")
    plan = TARGETS[target].encoder
    if plan.precision == "int8":
        quantize.quantize_openvino(onnx_path, xml, tensors)
        return xml, False
    source, fused = onnx_path, False
    op = recommended("openvino", "encoder")
    graph = onnx.load(str(onnx_path))
    if op and fusion_guard(graph, "openvino", op) is None:
        graph, counts = fuse_attention(graph, target="openvino", op=op)
        if any(counts.values()):
            source, fused = onnx_path.with_name(f"{form}-fused.onnx"), True
            onnx.save(graph, str(source))
    quantize.convert_openvino(source, xml, weights="fp16" if plan.precision == "bf16" else "fp32")
    return xml, fused


def compare(model: Any, rounds: int, threads: int, calib_images: int, targets: Sequence[str] = OPENVINO_TARGETS) -> list[dict[str, Any]]:
    """One row per target and form: median / p90 encoder ms, per-round ratio to the model form of the same target,
    executed layer counts and the embedding's distance from the fp32 ONNX graph."""
    import onnxruntime as ort

    policy = model.processing_policy()
    tensors = [processing.preprocess_image(image, policy)[0] for image in calibration_set(None, calib_images, 0).images]
    contract = graphs.encoder_contract(model)
    candidates = []
    with tempfile.TemporaryDirectory() as tmp:
        for form in graphs.ENCODER_FORMS:
            onnx_path = graphs.export_encoder(model, Path(tmp) / f"{form}.onnx", form=form)
            graphs.slim(onnx_path)
            fp32 = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            refs = [fp32.run(None, {io_contract.ENCODER_INPUT: tensor})[0] for tensor in tensors[:4]]
            for target in targets:
                log.info("%s, %s form", target, form)
                xml, fused = _ir(target, form, onnx_path, tensors)
                runner = load_backend("openvino", xml, contract, threads=threads, **TARGETS[target].encoder.runtime_options)
                error = max(float(np.abs(runner.run({io_contract.ENCODER_INPUT: t})[io_contract.ENCODER_OUTPUT] - ref).max()
                                  / np.abs(ref).max()) for t, ref in zip(tensors, refs))
                candidates.append(SimpleNamespace(target=target, form=form, fused=fused, run=runner.run, times=[], error=error,
                                                  feeds={io_contract.ENCODER_INPUT: tensors[0]}, layers=executed_layers(runner.compiled)))
        measure(candidates, rounds)
    rows = []
    for c in candidates:
        base = next(b for b in candidates if b.target == c.target and b.form == graphs.DEFAULT_ENCODER_FORM).times
        rows.append({"target": c.target, "form": c.form, "attention_fused": c.fused, "median_ms": statistics.median(c.times),
                     "p90_ms": float(np.percentile(c.times, 90)), "ratio": statistics.median(t / b for t, b in zip(c.times, base)),
                     "transposes": c.layers.get("Transpose", 0), "reorders": c.layers.get("Reorder", 0),
                     "matrix_products": sum(c.layers.get(kind, 0) for kind in MATRIX_PRODUCTS),
                     "max_relative_error_vs_fp32": c.error})
    return sorted(rows, key=lambda row: (targets.index(row["target"]), row["form"]))


def markdown(rows: list[dict[str, Any]], command: str, model: str, threads: int, rounds: int) -> str:
    versions = tool_versions("openvino", "nncf", "torch")
    lines = [
        f"Measured by `{command}` on {cpu_name()}, {threads} threads, {rounds} interleaved rounds; model `{model}`; "
        + ", ".join(f"{k} {v}" for k, v in versions.items()) + ". Each IR made as the build makes it (int8: NNCF on "
        "the same calibration images) and run with its target's options. `ratio`: median over rounds of the form's "
        "time / the model form's on the same target in the same round; layers: as OpenVINO executes them after its "
        "own fusions (matrix products: FullyConnected and MatMul layers outside fused attention kernels); `error`: "
        "largest |IR - fp32 ONNX| / max |fp32 ONNX| of the embedding on 4 calibration images.",
        "",
        "| target | encoder form | attention | median ms | p90 ms | ratio | Transpose layers | Reorder layers | matrix products | error |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['target']} | {row['form']} | {'fused' if row['attention_fused'] else 'unfused'} | {row['median_ms']:.0f} | "
                     f"{row['p90_ms']:.0f} | {row['ratio']:.2f} | {row['transposes']} | {row['reorders']} | {row['matrix_products']} | "
                     f"{row['max_relative_error_vs_fp32']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam", choices=list_models())
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-images", type=int, default=32)
    parser.add_argument("--targets", nargs="+", choices=OPENVINO_TARGETS, default=list(OPENVINO_TARGETS))
    parser.add_argument("--markdown", type=Path, help="write the table into this file's encoder_forms section")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = compare(model, args.rounds, args.threads, args.calib_images, tuple(args.targets))
    text = markdown(rows, command_line("sammed_edge.export.studies.compare_encoder_forms", argv), args.model, args.threads, args.rounds)
    publish(text, rows, args.markdown, "encoder_forms", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
