"""ONNX export of the two graphs (image encoder, prompt decoder), each paired with a check against PyTorch.

The wrappers here are export-only modules: they fix the I/O contract of `runtime.contract` and replace
Python branches by arithmetic (the mask prompt is blended by `has_mask_input`), so one graph serves every prompt.
`export_*` writes a graph; `verify_*` runs it in onnxruntime against the PyTorch model and raises
`VerificationError` with the numbers when it is outside tolerance.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sammed_edge.runtime import contract as io_contract
from sammed_edge.runtime import processing

# the decoder wrapper and the layout / softmax settings live below this module and stay importable from here
from .decoder_graph import (  # noqa: F401
    DEFAULT_EMBEDDING_LAYOUT,
    DEFAULT_SOFTMAX,
    EMBEDDING_LAYOUTS,
    SOFTMAX_PLACEMENTS,
    DecoderGraph,
)
from .factored_decoder import FactoredDecoderGraph
from .models.common import LayerNorm2d
from .models.sam import SamModel

log = logging.getLogger(__name__)

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 17
# how the decoder graph is written: "factored" reorders the image-sized products (factored_decoder.py), "sam" is
# the model's own forward (the plain export the benchmarks compare against)
DECODER_FORMS = ("factored", "sam")
DEFAULT_DECODER_FORM = "factored"
# how the encoder graph is written: "model" is the model's own forward; "tokens" keeps TinyViT's attention stages
# as B x L x C tokens with separate q / k / v products (token_encoder.py), laid out for OpenVINO's CPU plugin
ENCODER_FORMS = ("model", "tokens")
DEFAULT_ENCODER_FORM = "model"


class VerificationError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond tolerance."""


def _neck_is_last(encoder: nn.Module, image_size: int) -> bool:
    """Whether `encoder`'s output is its neck's output, found by running it once on a blank 1 x 3 x S x S image."""
    outputs: list[torch.Tensor] = []
    handle = encoder.neck.register_forward_hook(lambda module, args, output: outputs.append(output))
    try:
        with torch.no_grad():
            result = encoder(torch.zeros(1, 3, image_size, image_size))
    finally:
        handle.remove()
    return len(outputs) == 1 and result is outputs[0]


def tokens_step(model: SamModel) -> str:
    """How the encoder graph lays its output out as tokens (EMBEDDING_LAYOUTS "tokens"), by the model's structure.

    "neck_norm" where the encoder ends with SAM's neck (its output is the neck's, the neck's last layer a
    LayerNorm2d: SAM's ViT, TinyViT): that LayerNorm runs over the tokens' channel axis after the switch to tokens.
    "transpose" where it works on after its neck (the student's upsampling and skip) or has no such neck: its
    output is transposed to tokens as it is.
    """
    encoder = model.image_encoder
    neck = getattr(encoder, "neck", None)
    if isinstance(neck, nn.Sequential) and isinstance(neck[-1], LayerNorm2d) and _neck_is_last(encoder, model.image_size):
        return "neck_norm"
    return "transpose"


class EncoderGraph(nn.Module):
    """image (1 x 3 x S x S) -> image_embeddings (1 x C x h x w, or 1 x h w x C in the tokens layout), the encoder
    written in `form` (ENCODER_FORMS).

    In the tokens layout the output becomes tokens as `tokens_step(model)` says: where the encoder ends with its
    neck, the neck's last LayerNorm runs over the tokens' channel axis, right after the neck's last convolution
    has been laid out as tokens (the same arithmetic, and no transpose after it); where it works on after its neck
    (the student), its output is transposed as it is.
    """

    def __init__(self, model: SamModel, form: str = DEFAULT_ENCODER_FORM, layout: str = DEFAULT_EMBEDDING_LAYOUT) -> None:
        super().__init__()
        if form not in ENCODER_FORMS:
            raise ValueError(f"unknown encoder form {form!r}; choose from {ENCODER_FORMS}")
        io_contract.check_embedding_layout(layout)
        if form == "tokens":
            from .token_encoder import token_encoder

            self.image_encoder = token_encoder(model)
        else:
            self.image_encoder = model.image_encoder
        self.layout = layout
        self.body, self.final_norm = self.image_encoder, None
        if layout == "tokens" and tokens_step(model) == "neck_norm":
            # the same modules (no copies) with the neck's last LayerNorm taken off
            neck = self.image_encoder.neck
            body = copy.copy(self.image_encoder)
            body._modules = dict(self.image_encoder._modules)
            body.neck = neck[:-1]
            self.body, self.final_norm = body, neck[-1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.body(image)
        if self.layout == "nchw":
            return x
        x = x.permute(0, 2, 3, 1).flatten(1, 2)
        if self.final_norm is not None:
            norm = self.final_norm
            x = F.layer_norm(x, tuple(norm.weight.shape), norm.weight, norm.bias, norm.eps)
        return x


def to_layout(embedding: np.ndarray, layout: str) -> np.ndarray:
    """A 1 x C x h x w embedding in `layout` (EMBEDDING_LAYOUTS)."""
    if io_contract.check_embedding_layout(layout) == "nchw":
        return embedding
    batch, channels = embedding.shape[:2]
    return np.ascontiguousarray(embedding.reshape(batch, channels, -1).transpose(0, 2, 1))


def encoder_contract(model: SamModel, layout: str = DEFAULT_EMBEDDING_LAYOUT) -> io_contract.GraphContract:
    grid = model.image_encoder.embedding_size[0]
    return io_contract.encoder_contract(model.image_size, model.prompt_encoder.embed_dim, grid, layout)


def decoder_contract(model: SamModel, layout: str = DEFAULT_EMBEDDING_LAYOUT) -> io_contract.GraphContract:
    grid = model.prompt_encoder.image_embedding_size[0]
    return io_contract.decoder_contract(model.prompt_encoder.embed_dim, grid, model.low_res_size, model.mask_decoder.num_mask_tokens,
                                        layout)


def _example(spec: io_contract.TensorSpec, dims: dict[str, int]) -> torch.Tensor:
    shape = [dims[d] if isinstance(d, str) else d for d in spec.shape]
    return torch.zeros(shape, dtype=getattr(torch, spec.dtype))


def _export(module: nn.Module, graph: io_contract.GraphContract, path: Path, exporter: str, opset: int) -> Path:
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose from {EXPORTERS}")
    dims = {name: span[1] for name, span in graph.dynamic_axes.items()}
    args = tuple(_example(spec, dims) for spec in graph.inputs)
    if graph.input_names[1:2] == ["point_coords"]:
        # realistic example prompts so that tracing sees every label value
        args[2][...] = torch.tensor([1.0, 0.0, 2.0, 3.0])[: args[2].shape[1]]
    dynamic = {}
    for spec in (*graph.inputs, *graph.outputs):
        axes = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
        if axes:
            dynamic[spec.name] = axes
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    # shapes are fixed by the contract (batch 1, fixed image size), so the tracer's shape-as-constant warnings are expected
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        if exporter == "torchscript":
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset, input_names=graph.input_names,
                output_names=graph.output_names, dynamic_axes=dynamic or None, do_constant_folding=True,
            )
        else:
            shapes = {
                spec.name: {i: torch.export.Dim(d, min=graph.dynamic_axes[d][0], max=graph.dynamic_axes[d][2])
                            for i, d in enumerate(spec.shape) if isinstance(d, str)} or None
                for spec in graph.inputs
            }
            program = torch.onnx.export(
                module, args, dynamo=True, opset_version=opset, input_names=graph.input_names,
                output_names=graph.output_names, dynamic_shapes=shapes if any(shapes.values()) else None,
            )
            program.save(str(path))
    return path


def slim(path: Path) -> dict[str, int]:
    """Clean a graph in place with onnxslim (constant folding, dead nodes, fusing reshapes); returns node counts."""
    import onnx
    import onnxslim

    model = onnx.load(str(path))
    before = len(model.graph.node)
    slimmed = onnxslim.slim(model)
    onnx.save(slimmed, str(path))
    return {"nodes_before": before, "nodes_after": len(slimmed.graph.node)}


def export_encoder(model: SamModel, path: str | Path, exporter: str = "torchscript", opset: int = DEFAULT_OPSET,
                   form: str = DEFAULT_ENCODER_FORM, layout: str = DEFAULT_EMBEDDING_LAYOUT) -> Path:
    """Write the image encoder graph in `form` (contract: `encoder_contract(model, layout)`)."""
    return _export(EncoderGraph(model, form, layout), encoder_contract(model, layout), Path(path), exporter, opset)


def decoder_module(model: SamModel, form: str = DEFAULT_DECODER_FORM, layout: str = DEFAULT_EMBEDDING_LAYOUT,
                   softmax: str = DEFAULT_SOFTMAX) -> nn.Module:
    """The export wrapper of the prompt decoder in `form` (one of DECODER_FORMS) taking the embedding in `layout`;
    every form computes the same outputs. `softmax` (SOFTMAX_PLACEMENTS) applies to the factored form."""
    if form == "factored":
        return FactoredDecoderGraph(model, layout, softmax)
    if form == "sam":
        return DecoderGraph(model, layout)
    raise ValueError(f"unknown decoder form {form!r}; choose from {DECODER_FORMS}")


def export_decoder(model: SamModel, path: str | Path, exporter: str = "torchscript", opset: int = DEFAULT_OPSET,
                   form: str = DEFAULT_DECODER_FORM, layout: str = DEFAULT_EMBEDDING_LAYOUT, softmax: str = DEFAULT_SOFTMAX) -> Path:
    """Write the prompt decoder graph (contract: `decoder_contract(model, layout)`) in `form` (see `decoder_module`)."""
    return _export(decoder_module(model, form, layout, softmax), decoder_contract(model, layout), Path(path), exporter, opset)


# ------------------------------------------------------------------------------------------ verification


@dataclass(frozen=True)
class Tolerance:
    """Allowed disagreement: |ours - ref| <= atol + rtol * max|ref| elementwise maximum."""

    atol: float
    rtol: float


FP32 = {"encoder": Tolerance(1e-4, 1e-4), "decoder": Tolerance(1e-4, 1e-4)}


def _layout(graph: Any, layout: str | None) -> str:
    """The embedding layout of `graph`: as given, else its backend contract's, else SAM's."""
    if layout is not None:
        return layout
    return io_contract.embedding_layout(graph.contract) if hasattr(graph, "contract") else DEFAULT_EMBEDDING_LAYOUT


def _runner(graph: Any, contract: io_contract.GraphContract) -> Any:
    """A backend for `graph`: a path runs in onnxruntime (CPU); anything with `.run(feeds)` is used as is."""
    if hasattr(graph, "run"):
        return graph
    from sammed_edge.runtime.backends import load_backend

    return load_backend("onnxruntime", graph, contract, device="cpu")


def _compare(name: str, ours: np.ndarray, ref: np.ndarray, tol: Tolerance | None, report: dict[str, Any]) -> None:
    diff = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    report[name] = max(report.get(name, 0.0), diff)
    report[f"{name}_scale"] = max(report.get(f"{name}_scale", 0.0), scale)
    if tol is not None and not diff <= tol.atol + tol.rtol * scale:
        raise VerificationError(
            f"{name}: max |exported - torch| = {diff:.3g} exceeds {tol.atol:g} + {tol.rtol:g} x {scale:.3g} (max |torch|)"
        )


def verify_encoder(model: SamModel, graph: Any, images: Sequence[np.ndarray], tolerance: Tolerance | None = FP32["encoder"],
                   layout: str | None = None) -> dict[str, Any]:
    """Run the encoder graph and PyTorch on real images; raise VerificationError beyond tolerance.

    Args:
        model: the PyTorch model.
        graph: an ONNX path (run in onnxruntime) or a runtime backend holding the exported encoder.
        images: H x W x 3 uint8 RGB images, preprocessed with the model's policy.
        tolerance: allowed difference; None only measures (reduced-precision graphs are judged by the accuracy gate).
        layout: the graph's embedding layout (default: a backend's contract says, else "nchw").

    Returns:
        report: images, max abs difference, reference scale, tolerance.
    """
    layout = _layout(graph, layout)
    runner = _runner(graph, encoder_contract(model, layout))
    policy = model.processing_policy()
    report: dict[str, Any] = {"images": len(images)}
    if tolerance is not None:
        report.update(atol=tolerance.atol, rtol=tolerance.rtol)
    for image in images:
        tensor, _ = processing.preprocess_image(image, policy)
        with torch.inference_mode():
            ref = to_layout(model.encode(torch.from_numpy(tensor)).numpy(), layout)
        ours = runner.run({io_contract.ENCODER_INPUT: tensor})[io_contract.ENCODER_OUTPUT]
        _compare("embedding_max_abs", ours, ref, tolerance, report)
    return report


def prompt_cases(image_shape: tuple[int, int], policy: processing.ProcessingPolicy, seed: int = 0) -> list[processing.Prompts]:
    """A fixed mix of prompts for decoder checks: a box, 1 / 3 clicks, box + clicks, clicks + a mask prompt."""
    rng = np.random.default_rng(seed)
    height, width = image_shape
    geometry = processing.ImageGeometry(image_shape, image_shape)

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        coords = np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], axis=1)
        return coords, (np.arange(n) % 2 == 0).astype(np.int64)

    box = np.array([0.2 * width, 0.25 * height, 0.7 * width, 0.8 * height])
    mask = rng.normal(0, 3, (policy.low_res_size, policy.low_res_size)).astype(np.float32)
    cases = [
        processing.check_prompts(geometry, policy, box=box),
        processing.check_prompts(geometry, policy, *points(1)),
        processing.check_prompts(geometry, policy, *points(3)),
        processing.check_prompts(geometry, policy, *points(2), box=box),
        processing.check_prompts(geometry, policy, *points(5), mask_input=processing.mask_prompt_from_logits(mask, policy)),
    ]
    return cases


def verify_decoder(model: SamModel, graph: Any, images: Sequence[np.ndarray], tolerance: Tolerance | None = FP32["decoder"],
                   layout: str | None = None) -> dict[str, Any]:
    """Run the decoder graph and PyTorch on real image embeddings with a mix of prompts; raise beyond tolerance.

    Also checks that the thresholded low-res masks agree except where the reference logit is near 0 (only with a
    tolerance; `graph` and `layout` as in `verify_encoder`).
    """
    layout = _layout(graph, layout)
    runner = _runner(graph, decoder_contract(model, layout))
    policy = model.processing_policy()
    graph = DecoderGraph(model).eval()
    report: dict[str, Any] = {"images": len(images), "prompt_sets": 0}
    if tolerance is not None:
        report.update(atol=tolerance.atol, rtol=tolerance.rtol)
    flipped = 0
    for image in images:
        tensor, geometry = processing.preprocess_image(image, policy)
        with torch.inference_mode():
            embedding = model.encode(torch.from_numpy(tensor))
        for prompts in prompt_cases(geometry.original_size, policy):
            feeds = processing.decoder_inputs(prompts, geometry, policy)
            feeds["image_embeddings"] = embedding.numpy()
            with torch.inference_mode():
                ref_iou, ref_masks = (t.numpy() for t in graph(**{k: torch.from_numpy(v) for k, v in feeds.items()}))
            outputs = runner.run({**feeds, "image_embeddings": to_layout(feeds["image_embeddings"], layout)})
            ours_iou, ours_masks = outputs["iou_predictions"], outputs["low_res_masks"]
            _compare("low_res_logits_max_abs", ours_masks, ref_masks, tolerance, report)
            _compare("iou_max_abs", ours_iou, ref_iou, tolerance, report)
            flipped += int(((ours_masks > 0) != (ref_masks > 0))[np.abs(ref_masks) > 1e-3].sum())
            report["prompt_sets"] += 1
    report["mask_pixels_flipped"] = flipped
    if flipped and tolerance is not None:
        raise VerificationError(f"{flipped} low-res mask pixels flip away from the threshold")
    return report


def graph_node_count(path: str | Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)

