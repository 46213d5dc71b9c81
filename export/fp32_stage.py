"""The first stage of every build: the fp32 ONNX graphs, exported in the target's forms, verified against PyTorch
and, where the target's backend runs it faster, with their attention fused.

Every target of a model starts from the same two fp32 graphs when it asks for the same forms (encoder form,
decoder form and softmax placement, embedding layout, exporter, opset, onnxslim): the onnxruntime targets share
one pair, the OpenVINO targets another. With an export cache (`BuildOptions.export_cache`, `build.py
--export-cache DIR`) a verified pair is kept under a key of everything that decides it: the model's configuration
and weights, those settings, the verification images and tolerances, the versions of torch, onnx and onnxslim, and
the source of the code that writes and checks the graphs. A later build with the same key copies the graphs and
their verification record instead of exporting and verifying again; any other build exports as if there were no
cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sammed_edge.runtime.sysinfo import tool_versions

from . import graphs
from .models.sam import SamModel
from .targets import GRAPHS, Target

RECORD = "fp32-stage.json"
# the code whose every change may change an exported graph or its check
_SOURCES = ("export/graphs.py", "export/decoder_graph.py", "export/factored_decoder.py", "export/token_encoder.py",
            "export/models", "runtime/contract.py", "runtime/processing.py")


def _source_digest() -> str:
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in _SOURCES:
        path = package / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.relative_to(package).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def export_key(model: SamModel, images: Sequence[np.ndarray], settings: dict[str, Any],
               tolerance: dict[str, graphs.Tolerance]) -> str:
    """sha256 of everything that decides a verified fp32 export (see the module docstring)."""
    digest = hashlib.sha256()
    header = {"config": model.config, "family": model.family, "settings": settings,
              "tolerance": {k: [v.atol, v.rtol] for k, v in sorted(tolerance.items())},
              "tools": tool_versions("torch", "onnx", "onnxslim", "onnxruntime"), "code": _source_digest()}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    for image in images:
        digest.update(repr((image.shape, image.dtype.str)).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def _export_and_verify(model: SamModel, folder: Path, images: Sequence[np.ndarray], settings: dict[str, Any],
                       tolerance: dict[str, graphs.Tolerance], step: Callable[[str], Callable[[], None]]) -> dict[str, Any]:
    layout = settings["embedding_layout"]
    exports = {
        "encoder": lambda path: graphs.export_encoder(model, path, exporter=settings["exporter"], opset=settings["opset"],
                                                      form=settings["encoder_form"], layout=layout),
        "decoder": lambda path: graphs.export_decoder(model, path, exporter=settings["exporter"], opset=settings["opset"],
                                                      form=settings["decoder_form"], layout=layout,
                                                      softmax=settings["decoder_softmax"]),
    }
    exported: dict[str, dict[str, Any]] = {}
    for name in GRAPHS:
        done = step(f"export {name}")
        path = exports[name](folder / f"{name}.onnx")
        exported[name] = {"onnxslim": graphs.slim(path) if settings["slim"] else None, "embedding_layout": layout}
        done()
    exported["encoder"]["form"] = settings["encoder_form"]
    exported["decoder"]["form"] = settings["decoder_form"]
    if settings["decoder_form"] == "factored":
        exported["decoder"]["softmax"] = settings["decoder_softmax"]
    if layout == "tokens":  # how the encoder's output became tokens, by what its structure allows
        exported["encoder"]["tokens_step"] = graphs.tokens_step(model)
    done = step(f"verify fp32 ONNX graphs against PyTorch on {len(images)} images")
    verification = {
        "encoder": graphs.verify_encoder(model, folder / "encoder.onnx", images, tolerance["encoder"], layout),
        "decoder": graphs.verify_decoder(model, folder / "decoder.onnx", images, tolerance["decoder"], layout),
    }
    done()
    return {"exported": exported, "onnx_fp32": verification}


def verified_fp32_graphs(model: SamModel, folder: Path, images: Sequence[np.ndarray], settings: dict[str, Any],
                         tolerance: dict[str, graphs.Tolerance], step: Callable[[str], Callable[[], None]],
                         cache: Path | None = None) -> dict[str, Any]:
    """Write `folder`/encoder.onnx and decoder.onnx, verified against PyTorch on `images`.

    Args:
        settings: exporter, opset, slim, encoder_form, decoder_form, decoder_softmax, embedding_layout.
        step: starts a named build step and returns the function that ends it.
        cache: folder of earlier verified exports (None: always export).

    Returns:
        {"exported": per-graph manifest records (onnxslim counts, forms, layout), "onnx_fp32": the verification
        reports, plus "cache": {"key", "hit"} with a cache}.

    Raises:
        graphs.VerificationError: a graph disagrees with PyTorch (nothing is cached).
    """
    if cache is None:
        return _export_and_verify(model, folder, images, settings, tolerance, step)
    key = export_key(model, images, settings, tolerance)
    entry = Path(cache) / key
    if (entry / RECORD).is_file():
        done = step("fp32 graphs from the export cache")
        for name in GRAPHS:
            shutil.copy(entry / f"{name}.onnx", folder / f"{name}.onnx")
        record = json.loads((entry / RECORD).read_text())
        done()
        return {**record, "cache": {"key": key, "hit": True}}
    record = _export_and_verify(model, folder, images, settings, tolerance, step)
    Path(cache).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=cache))
    try:
        for name in GRAPHS:
            shutil.copy(folder / f"{name}.onnx", staging / f"{name}.onnx")
        (staging / RECORD).write_text(json.dumps(record, indent=1))
        if not entry.exists():
            staging.rename(entry)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**record, "cache": {"key": key, "hit": False}}


def _fusion_feeds(model: SamModel, fp32_dir: Path, images: Sequence[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Real inputs for comparing fused and unfused graphs: preprocessed images for the encoder; their embeddings
    (unfused encoder) with `graphs.prompt_cases` for the decoder."""
    from sammed_edge.kernels.onnx import runner
    from sammed_edge.runtime import processing
    import onnx

    policy = model.processing_policy()
    encode = runner(onnx.load(str(fp32_dir / "encoder.onnx")), "onnxruntime")
    contract = graphs.encoder_contract(model)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "decoder": []}
    for image in images:
        tensor, geometry = processing.preprocess_image(image, policy)
        encoder_feeds = {contract.input_names[0]: tensor}
        feeds["encoder"].append(encoder_feeds)
        embedding = encode(encoder_feeds)[contract.output_names[0]]
        for prompts in graphs.prompt_cases(geometry.original_size, policy):
            case = processing.decoder_inputs(prompts, geometry, policy)
            feeds["decoder"].append({**case, "image_embeddings": embedding})
    return feeds


def fuse_graphs(model: SamModel, target: Target, fp32_dir: Path, images: Sequence[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Rewrite the attention of the verified fp32 graphs in `fp32_dir` into fused nodes where that is the measured
    better choice for the target's backend (`kernels.onnx.RECOMMENDED`), in place; graphs quantized to int8 stay
    unfused.

    Each fused graph is checked against its unfused original on real images (1e-4 relative); returns the manifest
    record per graph: applied or not (and why), the fused operator, node counts per fusion and the largest
    relative difference.

    Raises:
        kernels.onnx.FusionVerificationError: a fused graph disagrees with the unfused one.
    """
    import onnx

    from sammed_edge.kernels.onnx import TARGETS as FUSION_TARGETS
    from sammed_edge.kernels.onnx import fuse_attention, fusion_guard, recommended, verify_fusion

    backend = target.backend if target.backend in FUSION_TARGETS else None
    records: dict[str, dict[str, Any]] = {}
    feeds = None
    for name in GRAPHS:
        path = fp32_dir / f"{name}.onnx"
        if backend is None:
            records[name] = {"applied": False, "reason": f"no fusion for the {target.backend} backend"}
            continue
        if target.plan(name).precision == "int8":
            # onnxruntime's quantizer mistakes the standard Attention for its contrib operator of the same name
            records[name] = {"applied": False, "reason": "int8 graphs are quantized unfused"}
            continue
        unfused = onnx.load(str(path))
        op = recommended(backend, name)
        reason = fusion_guard(unfused, backend, op) if op else f"not faster on {backend} (docs/fusion.md)"
        if reason is not None:
            records[name] = {"applied": False, "reason": reason}
            continue
        fused, counts = fuse_attention(unfused, target=backend, op=op)
        if not any(counts.values()):
            records[name] = {"applied": False, "reason": "no attention pattern matched", "counts": counts}
            continue
        feeds = feeds or _fusion_feeds(model, fp32_dir, images)
        report = verify_fusion(unfused, fused, feeds[name], backend=backend)
        onnx.save(fused, str(path))
        records[name] = {"applied": True, "op": op, "counts": counts,
                         "max_relative_diff": max(r["relative"] for r in report.values())}
    return records
