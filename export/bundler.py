"""Bundle assembly: checkpoint -> verified graphs -> bundle folder, for a build target of `targets.TARGETS`.

Every build first exports fp32 ONNX graphs and verifies them against PyTorch. A target then turns them into its
artifacts (ONNX, int8 ONNX, OpenVINO IR, TensorRT engines), and the artifacts are checked again through the
backend that will run them: fp32 graphs against PyTorch with fp32 tolerances, reduced-precision graphs by the
accuracy gate (Dice on held-out data next to the fp32 graphs). Only then is the bundle moved into place; any
failure leaves no bundle behind.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from sammed_edge.runtime import bundle as bundle_schema
from sammed_edge.runtime.backends import load_backend
from sammed_edge.runtime.predictor import Predictor
from sammed_edge.runtime.sysinfo import tool_versions

from . import graphs, quantize
from .gate import BOX_BUDGET, CLICK_BUDGET, POINT_BUDGET, accuracy_gate
from .calibration import CalibrationSet
from .fp32_stage import fuse_graphs, verified_fp32_graphs
from .models.sam import SamModel
from .predictor import TorchPredictor
from .targets import GRAPHS, TARGETS, GraphPlan, Target  # noqa: F401  (the targets stay importable from here)

log = logging.getLogger("sammed_edge.build")

TOOLS = ("sammed-edge", "torch", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf", "tensorrt", "numpy",
         "opencv-python-headless")
@dataclass
class BuildOptions:
    """Knobs of a build (defaults chosen by measurement: docs/exporters.md, docs/quantization.md)."""

    exporter: str = "torchscript"
    opset: int = graphs.DEFAULT_OPSET
    slim: bool = True
    verify_images: int = 4
    tolerance: dict[str, graphs.Tolerance] = field(default_factory=lambda: dict(graphs.FP32))
    ort_quant_ops: tuple[str, ...] = ("Gemm",)
    ort_calibration: str = "minmax"
    nncf_preset: str = quantize.DEFAULT_OPENVINO_PRESET
    fuse: bool = True
    gate: bool = True
    box_budget: float = BOX_BUDGET
    point_budget: float = POINT_BUDGET
    click_budget: float = CLICK_BUDGET  # gates clicks 1 and 3 when the decoder runs below fp32
    decoder_form: str = graphs.DEFAULT_DECODER_FORM
    encoder_form: str = "auto"  # "auto": the target's form (Target.encoder_form), else one of graphs.ENCODER_FORMS
    embedding_layout: str = "auto"  # "auto": the target's (Target.embedding_layout), else one of graphs.EMBEDDING_LAYOUTS
    decoder_softmax: str = "auto"  # "auto": the target's (Target.decoder_softmax), else one of graphs.SOFTMAX_PLACEMENTS
    export_cache: Path | None = None  # verified fp32 exports kept for later builds (fp32_stage.py); None: none kept

    def exporter_record(self) -> dict[str, Any]:
        """The export settings as the manifest's provenance records them."""
        return {"kind": self.exporter, "opset": self.opset, "onnxslim": self.slim, "fuse_attention": self.fuse,
                "decoder_form": self.decoder_form, "encoder_form": self.encoder_form, "embedding_layout": self.embedding_layout,
                "decoder_softmax": self.decoder_softmax, "nncf_preset": self.nncf_preset}


def _chosen(target: Target, options: BuildOptions, name: str, choices: tuple[str, ...]) -> str:
    """Option `name` of the build: the requested value, or for "auto" the target's (both must be in `choices`)."""
    value = getattr(options, name)
    value = getattr(target, name) if value == "auto" else value
    if value not in choices:
        raise ValueError(f"unknown {name.replace('_', ' ')} {value!r}; choose from {choices}")
    return value


def embedding_layout(target: Target, options: BuildOptions) -> str:
    """The embedding layout between the bundle's graphs (graphs.EMBEDDING_LAYOUTS)."""
    return _chosen(target, options, "embedding_layout", graphs.EMBEDDING_LAYOUTS)


def decoder_softmax(target: Target, options: BuildOptions) -> str:
    """Where the factored decoder normalises its token -> image softmax (graphs.SOFTMAX_PLACEMENTS)."""
    return _chosen(target, options, "decoder_softmax", graphs.SOFTMAX_PLACEMENTS)


def encoder_form(model: SamModel, target: Target, options: BuildOptions) -> str:
    """The form the encoder graph is written in: the requested one (`graphs.EncoderGraph` refuses one the model
    does not have), or for "auto" the target's where the model has it, else the model's own forward."""
    from .token_encoder import has_token_form

    if options.encoder_form != "auto":
        return options.encoder_form
    form = target.encoder_form
    return form if form != "tokens" or has_token_form(model) else graphs.DEFAULT_ENCODER_FORM


@dataclass
class BuildResult:
    path: Path
    manifest: dict[str, Any]
    seconds: dict[str, float]


def _step(name: str, seconds: dict[str, float]) -> Callable[[], None]:
    log.info("… %s", name)
    start = time.perf_counter()

    def done() -> None:
        seconds[name] = round(time.perf_counter() - start, 2)
        log.info("  %s done in %.1f s", name, seconds[name])

    return done


def check_options(backend: str) -> dict[str, Any]:
    """Backend options for the build's own checks: onnxruntime graphs are checked on the CPU provider, so that a
    build verifies and gates its graphs the same way on a machine with or without a GPU."""
    return {"device": "cpu"} if backend == "onnxruntime" else {}


def check_predictor(model: SamModel, bundle_dir: Path, images: Sequence[np.ndarray], backend: str) -> dict[str, Any]:
    """End-to-end check: the runtime Predictor on the bundle vs TorchPredictor, box and click prompts.

    Raises:
        graphs.VerificationError: masks disagree on more than 0.1 % of pixels for any prompt.
    """
    runtime = Predictor.from_bundle(bundle_dir, cache_size=0, **check_options(backend))
    reference = TorchPredictor(model)
    worst = 1.0
    for image in images:
        runtime.set_image(image)
        reference.set_image(image)
        height, width = image.shape[:2]
        box = np.array([0.2 * width, 0.2 * height, 0.75 * width, 0.8 * height])
        prompts = [dict(box=box, multimask_output=False), dict(point_coords=[[width / 2, height / 2]], point_labels=[1])]
        for kwargs in prompts:
            ours, _, _ = runtime.predict(**kwargs)
            ref, _, _ = reference.predict(**kwargs)
            worst = min(worst, float((ours == ref).mean()))
    if worst < 0.999:
        raise graphs.VerificationError(f"runtime Predictor masks agree with PyTorch on only {worst:.4%} of pixels")
    return {"images": len(images), "min_mask_agreement": round(worst, 6)}


def _convert(target: Target, graph: str, fp32_onnx: Path, out_dir: Path, calib: CalibrationSet | None,
             model: SamModel, options: BuildOptions) -> dict[str, Any]:
    """Turn one verified fp32 ONNX graph into the target's artifact; returns its manifest entry (without hashes)."""
    from sammed_edge.runtime import processing

    plan = target.plan(graph)
    entry: dict[str, Any] = {"precision": plan.precision, "runtime_options": dict(plan.runtime_options)}
    needs_calibration = plan.precision == "int8"
    tensors = []
    if needs_calibration:
        if calib is None or not calib.images:
            raise ValueError(f"{target.name} needs calibration images")
        policy = model.processing_policy()
        tensors = [processing.preprocess_image(image, policy)[0] for image in calib.images]
    if target.artifact == "onnx":
        path = out_dir / f"{graph}.onnx"
        if needs_calibration:
            entry["quantization"] = quantize.quantize_onnxruntime(fp32_onnx, path, tensors, options.ort_quant_ops, options.ort_calibration)
        else:
            shutil.copy(fp32_onnx, path)
        entry.update(file=path.name, format="onnx", opset=options.opset, nodes=graphs.graph_node_count(path))
    elif target.artifact == "openvino":
        path = out_dir / f"{graph}.xml"
        if needs_calibration:
            entry["quantization"] = quantize.quantize_openvino(fp32_onnx, path, tensors, preset=options.nncf_preset)
        else:
            # graphs computed in bf16 / fp16 keep their weights in fp16: exact enough for that compute, half the memory
            weights = "fp16" if plan.precision in ("bf16", "fp16") else "fp32"
            entry["conversion"] = quantize.convert_openvino(fp32_onnx, path, weights=weights)
        entry.update(file=path.name, weights_file=path.with_suffix(".bin").name, format="openvino-ir")
    elif target.artifact == "tensorrt":
        from . import trt_build

        source = out_dir / f"{graph}.onnx"
        if needs_calibration:  # explicit quantization: symmetric int8 Q/DQ, as TensorRT expects
            entry["quantization"] = quantize.quantize_onnxruntime(fp32_onnx, source, tensors, ("Conv", "Gemm", "MatMul"),
                                                                  options.ort_calibration, symmetric=True)
        else:
            shutil.copy(fp32_onnx, source)
        engine = out_dir / f"{graph}.engine"
        layout = embedding_layout(target, options)
        contract = graphs.encoder_contract(model, layout) if graph == "encoder" else graphs.decoder_contract(model, layout)
        entry["tensorrt_compat"] = trt_build.check_tensorrt_compat(source, contract)
        report = trt_build.build_engine(source, engine, contract, plan.precision, timing_cache=out_dir.parent / "timing.cache")
        entry.update(file=engine.name, onnx_file=source.name, format="tensorrt-engine", engine=report)
        entry["runtime_options"]["built_with"] = {"tensorrt": report["tensorrt"], "gpu": report["gpu"]}
    else:
        raise ValueError(f"unknown artifact kind {target.artifact!r}")
    return entry


def hash_entries(root: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Set every manifest graph entry's artifact hashes (`file` -> `sha256`, `<kind>_file` -> `<kind>_sha256`) and
    total `bytes` from the files in `root`."""
    for entry in entries.values():
        files = [k for k in entry if k == "file" or k.endswith("_file")]
        for key in files:
            entry["sha256" if key == "file" else key[: -len("file")] + "sha256"] = bundle_schema.sha256_file(root / entry[key])
        entry["bytes"] = sum((root / entry[key]).stat().st_size for key in files)


def _fp32_manifest(model: SamModel, folder: Path, layout: str) -> None:
    """A manifest for the verified fp32 ONNX graphs (embedding in `layout`), so the gate can run them through the
    same runtime code."""
    entries = {g: {"file": f"{g}.onnx", "contract": c.to_dict()} for g, c in
               (("encoder", graphs.encoder_contract(model, layout)), ("decoder", graphs.decoder_contract(model, layout)))}
    hash_entries(folder, entries)
    manifest = {"schema": bundle_schema.SCHEMA, "schema_version": bundle_schema.SCHEMA_VERSION,
                "model": {"name": "fp32-reference", "family": model.family}, "processing": model.processing_policy().to_dict(),
                "target": {"name": "onnx-fp32", "backend": "onnxruntime", "precision": {g: "fp32" for g in GRAPHS}},
                "graphs": entries, "provenance": {}, "verification": {}}
    bundle_schema.write_manifest(folder, manifest)


def build_bundle(
    model: SamModel,
    target: Target,
    out: str | Path,
    images: Sequence[np.ndarray],
    model_name: str,
    checkpoint: str | Path | None,
    options: BuildOptions | None = None,
    calibration: CalibrationSet | None = None,
) -> BuildResult:
    """Export, convert, verify (and for reduced precision, gate) a bundle for `target`.

    Args:
        model: the PyTorch model (eval mode).
        target: build target.
        out: bundle folder to create (replaced if it already holds a bundle).
        images: real H x W x 3 uint8 images for verification.
        model_name: registry name or a label for a custom checkpoint.
        checkpoint: the weights file, for provenance.
        options: exporter, quantization and gate settings.
        calibration: calibration images and gate data (needed by int8 targets and by the gate).

    Raises:
        graphs.VerificationError: a graph disagrees with PyTorch (no bundle is written).
        gate.GateError: a reduced-precision build lost too much accuracy (no bundle is written).
        RuntimeError: the target cannot be built on this machine (names what is missing).
        FileExistsError: `out` exists and is not a bundle.
    """
    options = options or BuildOptions()
    missing = target.missing()
    if missing:
        raise RuntimeError(f"target {target.name} needs {', '.join(missing)}, not installed here")
    out = Path(out)
    if out.exists() and not (out / bundle_schema.MANIFEST).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a bundle; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    fp32_dir, bundle_dir = scratch / "fp32", scratch / "bundle"
    fp32_dir.mkdir()
    bundle_dir.mkdir()
    try:
        layout = embedding_layout(target, options)
        settings = {"exporter": options.exporter, "opset": options.opset, "slim": options.slim,
                    "encoder_form": encoder_form(model, target, options), "decoder_form": options.decoder_form,
                    "decoder_softmax": decoder_softmax(target, options), "embedding_layout": layout}
        stage = verified_fp32_graphs(model, fp32_dir, images, settings, options.tolerance, lambda name: _step(name, seconds),
                                     options.export_cache)
        exported = stage["exported"]
        verification: dict[str, Any] = {"onnx_fp32": stage["onnx_fp32"]}

        if options.fuse:
            done = _step("fuse attention", seconds)
            for name, record in fuse_graphs(model, target, fp32_dir, images).items():
                exported[name]["fusion"] = record
            done()
        else:
            for name in GRAPHS:
                exported[name]["fusion"] = {"applied": False, "reason": "--no-fuse"}

        entries: dict[str, dict[str, Any]] = {}
        contracts = {"encoder": graphs.encoder_contract(model, layout), "decoder": graphs.decoder_contract(model, layout)}
        for name in GRAPHS:
            done = _step(f"{target.name}: {name} ({target.plan(name).precision})", seconds)
            entry = _convert(target, name, fp32_dir / f"{name}.onnx", bundle_dir, calibration, model, options)
            entry["contract"] = contracts[name].to_dict()
            entry.update(exported[name])
            entries[name] = entry
            done()
        done = _step(f"verify {target.name} artifacts through {target.backend}", seconds)
        for name, verify in (("encoder", graphs.verify_encoder), ("decoder", graphs.verify_decoder)):
            entry = entries[name]
            backend = load_backend(target.backend, bundle_dir / entry["file"], contracts[name],
                                   **{**entry["runtime_options"], **check_options(target.backend)})
            exact = entry["precision"] == "fp32"
            verification[name] = verify(model, backend, images, options.tolerance[name] if exact else None)
            verification[name]["judged_by"] = "fp32 tolerance" if exact else "accuracy gate"
        done()
        hash_entries(bundle_dir, entries)
        manifest = {
            "schema": bundle_schema.SCHEMA,
            "schema_version": bundle_schema.SCHEMA_VERSION,
            "model": {"name": model_name, "family": model.family, "config": model.config},
            "processing": model.processing_policy().to_dict(),
            "target": {"name": target.name, "backend": target.backend, "precision": target.precision},
            "graphs": entries,
            "provenance": {
                "checkpoint": {"path": str(checkpoint) if checkpoint else None,
                               "sha256": bundle_schema.sha256_file(checkpoint) if checkpoint and Path(checkpoint).is_file() else None},
                "exporter": options.exporter_record(),
                "export_cache": stage.get("cache"),
                "calibration": calibration.describe() if calibration is not None and target.reduced else None,
                "tools": tool_versions(*TOOLS),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
            },
            "verification": verification,
        }
        bundle_schema.write_manifest(bundle_dir, manifest)
        if target.reduced:
            done = _step("accuracy gate on held-out data" + ("" if options.gate else " (not enforced: --no-gate)"), seconds)
            if calibration is None:
                raise ValueError("reduced-precision targets need calibration data for the accuracy gate")
            _fp32_manifest(model, fp32_dir, layout)
            verification["gate"] = accuracy_gate(
                Predictor.from_bundle(fp32_dir, cache_size=0, **check_options("onnxruntime")),
                Predictor.from_bundle(bundle_dir, cache_size=0, **check_options(target.backend)),
                calibration.holdout, calibration.holdout_images, options.box_budget, options.point_budget, enforce=options.gate,
                click_budget=options.click_budget if target.plan("decoder").precision != "fp32" else None,
            )
        else:
            done = _step("check the bundle through the runtime Predictor", seconds)
            verification["predictor"] = check_predictor(model, bundle_dir, images[:2], target.backend)
        verification["passed"] = bool(verification.get("gate", {}).get("passed", True))
        bundle_schema.write_manifest(bundle_dir, manifest)
        done()
        if out.exists():
            shutil.rmtree(out)
        bundle_dir.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BuildResult(out, manifest, seconds)
