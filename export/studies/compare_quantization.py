"""Choose the int8 settings by measurement: calibration method and quantized operators, scored by the accuracy gate.

    python -m sammed_edge.export.studies.compare_quantization [--model lite_medsam] [--out docs/quantization.md]

Exports the fp32 graphs once, then quantizes the encoder with each variant (onnxruntime static QDQ: calibration
method x operator set; NNCF for OpenVINO), all from the same calibration images, and scores every variant with the
build's accuracy gate on the same held-out masks (box and one-point Dice against the fp32 graphs) and the int8
kernels onnxruntime really runs. Speed is measured by `export/bench_targets.py` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


from sammed_edge.runtime import bundle as bundle_schema
from sammed_edge.runtime import processing
from sammed_edge.runtime.predictor import Predictor
from sammed_edge.runtime.sysinfo import cpu_name, tool_versions

from .. import graphs, quantize
from ..bundler import _fp32_manifest, hash_entries
from ..calibration import calibration_set
from ..gate import accuracy_gate
from ..models import load_model
from .doc_sections import publish

VARIANTS: dict[str, dict[str, Any]] = {
    "ort minmax, Gemm": {"kind": "onnxruntime", "method": "minmax", "ops": ("Gemm",)},
    "ort entropy, Gemm": {"kind": "onnxruntime", "method": "entropy", "ops": ("Gemm",)},
    "ort percentile, Gemm": {"kind": "onnxruntime", "method": "percentile", "ops": ("Gemm",)},
    "ort minmax, Gemm+MatMul+Conv": {"kind": "onnxruntime", "method": "minmax", "ops": ("Gemm", "MatMul", "Conv")},
    "nncf (OpenVINO)": {"kind": "openvino"},
}


def run(model_name: str, variants: list[str], workdir: Path) -> dict[str, Any]:
    model = load_model(model_name).eval()
    calib = calibration_set()
    policy = model.processing_policy()
    tensors = [processing.preprocess_image(image, policy)[0] for image in calib.images]
    fp32_dir = workdir / "fp32"
    fp32_dir.mkdir(parents=True, exist_ok=True)
    graphs.slim(graphs.export_encoder(model, fp32_dir / "encoder.onnx"))
    graphs.slim(graphs.export_decoder(model, fp32_dir / "decoder.onnx"))
    _fp32_manifest(model, fp32_dir)
    reference = Predictor.from_bundle(fp32_dir, cache_size=0)
    rows: dict[str, Any] = {}
    for name in variants:
        spec = VARIANTS[name]
        folder = workdir / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        shutil.copytree(fp32_dir, folder, dirs_exist_ok=True)
        start = time.perf_counter()
        if spec["kind"] == "onnxruntime":
            report = quantize.quantize_onnxruntime(fp32_dir / "encoder.onnx", folder / "encoder.onnx", tensors, spec["ops"], spec["method"])
            backend, options, encoder_file = "onnxruntime", {}, "encoder.onnx"
        else:
            report = quantize.quantize_openvino(fp32_dir / "encoder.onnx", folder / "encoder.xml", tensors)
            backend, options, encoder_file = "openvino", {"inference_precision": "fp32"}, "encoder.xml"
        seconds = time.perf_counter() - start
        manifest = json.loads((folder / bundle_schema.MANIFEST).read_text())
        manifest["graphs"]["encoder"]["file"] = encoder_file
        if backend == "openvino":  # an IR encoder beside the ONNX decoder: run both on OpenVINO
            manifest["target"]["backend"] = "openvino"
            manifest["graphs"]["encoder"]["weights_file"] = "encoder.bin"
        hash_entries(folder, manifest["graphs"])
        bundle_schema.write_manifest(folder, manifest)
        candidate = Predictor.from_bundle(folder, cache_size=0, **options)
        gate = accuracy_gate(reference, candidate, calib.holdout, calib.holdout_images, enforce=False)
        rows[name] = {
            "dice": gate["dice"], "dice_fp32": gate["dice_fp32"], "drop": gate["drop"], "passed": gate["passed"],
            "holdout_masks": gate["holdout_masks"], "quantize_s": round(seconds, 1),
            "int8_kernels": report.get("int8_kernels"),
        }
        print(name, json.dumps(rows[name]), flush=True)
    return {"model": model_name, "calibration": calib.describe(), "cpu": cpu_name(),
            "tools": tool_versions("onnxruntime", "openvino", "nncf"), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    calib = result["calibration"]
    lines = [
        f"Model `{result['model']}`, {calib['calibration_images']} calibration images and {calib['holdout_masks']} held-out "
        f"masks ({calib['source']}); {result['cpu']}, 2 threads, fp32 for everything not quantized; tools: "
        + ", ".join(f"{k} {v}" for k, v in result["tools"].items()) + ".",
        "",
        "| variant | box Dice | drop vs fp32 | 1-point Dice | drop | int8 kernels run | quantization s |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    first = next(iter(result["rows"].values()), None)
    if first:
        lines.append(f"| fp32 | {first['dice_fp32']['box']:.2f} | - | {first['dice_fp32']['points1']:.2f} | - | - | - |")
    for name, row in result["rows"].items():
        kernels = ", ".join(f"{k} {v}" for k, v in (row["int8_kernels"] or {}).items() if v) or "(OpenVINO decides at compile time)"
        lines.append(f"| {name} | {row['dice']['box']:.2f} | {row['drop']['box']:+.2f} | {row['dice']['points1']:.2f} | "
                     f"{row['drop']['points1']:+.2f} | {kernels} | {row['quantize_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, help="Markdown file whose marked section to replace")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.model, args.variants, Path(tmp))
    publish(markdown(result), result, args.out, "compare_quantization", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
