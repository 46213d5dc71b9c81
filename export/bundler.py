"""Build targets and bundle assembly: checkpoint -> verified graphs -> bundle folder.

A target names a backend and per-graph precisions. Building one exports the graphs into a scratch folder next to
the output, verifies every graph against PyTorch on real images, checks the finished bundle end to end through the
runtime `Predictor`, and only then moves it into place; any failure leaves no bundle behind.
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
from sammed_edge.runtime.predictor import Predictor
from sammed_edge.runtime.sysinfo import tool_versions

from . import graphs
from .models.sam import SamModel
from .predictor import TorchPredictor

log = logging.getLogger("sammed_edge.build")

TOOLS = ("sammed-edge", "torch", "onnx", "onnxruntime", "onnxslim", "numpy", "opencv-python-headless")


@dataclass(frozen=True)
class Target:
    """A build target: which backend runs the bundle and in what precision each graph is stored.

    Attributes:
        name: target name on the command line.
        backend: runtime backend of the bundle.
        precision: graph -> precision ("fp32", "fp16", "int8", ...).
        description: one line for --help.
        requires: distributions the build needs.
    """

    name: str
    backend: str
    precision: dict[str, str]
    description: str
    requires: tuple[str, ...] = field(default=("onnx", "onnxruntime"))


TARGETS: dict[str, Target] = {
    "onnx-fp32": Target("onnx-fp32", "onnxruntime", {"encoder": "fp32", "decoder": "fp32"},
                        "ONNX graphs for onnxruntime (CPU, or CUDA when present), fp32"),
}


@dataclass
class BuildOptions:
    """Knobs of a build (defaults chosen by measurement, see docs/exporters.md)."""

    exporter: str = "torchscript"
    opset: int = graphs.DEFAULT_OPSET
    slim: bool = True
    verify_images: int = 4
    tolerance: dict[str, graphs.Tolerance] = field(default_factory=lambda: dict(graphs.FP32))


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


def check_predictor(model: SamModel, bundle_dir: Path, images: Sequence[np.ndarray]) -> dict[str, Any]:
    """End-to-end check: the runtime Predictor on the bundle vs TorchPredictor, box and click prompts.

    Raises:
        graphs.VerificationError: masks disagree on more than 0.1 % of pixels for any prompt.
    """
    runtime = Predictor.from_bundle(bundle_dir, cache_size=0)
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


def build_bundle(
    model: SamModel,
    target: Target,
    out: str | Path,
    images: Sequence[np.ndarray],
    model_name: str,
    checkpoint: str | Path | None,
    options: BuildOptions | None = None,
) -> BuildResult:
    """Export, verify and write a bundle for `target`.

    Args:
        model: the PyTorch model (eval mode).
        target: build target.
        out: bundle folder to create (replaced if it already holds a bundle).
        images: real H x W x 3 uint8 images for verification.
        model_name: registry name or a label for a custom checkpoint.
        checkpoint: the weights file, for provenance.
        options: exporter settings.

    Raises:
        graphs.VerificationError: a graph or the assembled bundle disagrees with PyTorch (no bundle is written).
        FileExistsError: `out` exists and is not a bundle.
    """
    options = options or BuildOptions()
    out = Path(out)
    if out.exists() and not (out / bundle_schema.MANIFEST).is_file() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a bundle; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        graph_entries: dict[str, dict[str, Any]] = {}
        for name, export, contract in (
            ("encoder", graphs.export_encoder, graphs.encoder_contract(model)),
            ("decoder", graphs.export_decoder, graphs.decoder_contract(model)),
        ):
            done = _step(f"export {name}", seconds)
            path = export(model, scratch / f"{name}.onnx", exporter=options.exporter, opset=options.opset)
            slim = graphs.slim(path) if options.slim else None
            done()
            graph_entries[name] = {
                "file": path.name, "sha256": None, "contract": contract.to_dict(), "format": "onnx", "opset": options.opset,
                "precision": target.precision[name], "nodes": graphs.graph_node_count(path), "onnxslim": slim,
            }
        verification: dict[str, Any] = {}
        done = _step(f"verify encoder on {len(images)} images", seconds)
        verification["encoder"] = graphs.verify_encoder(model, scratch / "encoder.onnx", images, options.tolerance["encoder"])
        done()
        done = _step("verify decoder", seconds)
        verification["decoder"] = graphs.verify_decoder(model, scratch / "decoder.onnx", images, options.tolerance["decoder"])
        done()
        for entry in graph_entries.values():
            entry["sha256"] = bundle_schema.sha256_file(scratch / entry["file"])
            entry["bytes"] = (scratch / entry["file"]).stat().st_size
        manifest = {
            "schema": bundle_schema.SCHEMA,
            "schema_version": bundle_schema.SCHEMA_VERSION,
            "model": {"name": model_name, "family": model.family, "config": model.config},
            "processing": model.processing_policy().to_dict(),
            "target": {"name": target.name, "backend": target.backend, "precision": target.precision},
            "graphs": graph_entries,
            "provenance": {
                "checkpoint": {"path": str(checkpoint) if checkpoint else None,
                               "sha256": bundle_schema.sha256_file(checkpoint) if checkpoint and Path(checkpoint).is_file() else None},
                "exporter": {"kind": options.exporter, "opset": options.opset, "onnxslim": options.slim},
                "tools": tool_versions(*TOOLS),
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
            },
            "verification": verification,
        }
        bundle_schema.write_manifest(scratch, manifest)
        done = _step("check the bundle through the runtime Predictor", seconds)
        verification["predictor"] = check_predictor(model, scratch, images[:2])
        verification["passed"] = True
        bundle_schema.write_manifest(scratch, manifest)
        done()
        if out.exists():
            shutil.rmtree(out)
        scratch.rename(out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return BuildResult(out, manifest, seconds)

