"""The I/O contract of each exported graph, as data.

Export writes graphs with these names, shapes and dynamic axes; the bundle manifest stores the contract; backends
check feeds against it; TensorRT optimisation profiles take their point-count ranges from it. The decoder keeps
SAM's ONNX input names and meanings so that existing SAM ONNX clients work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import InputError

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")

# Prompt points per decoder call (clicks + 2 box corners or 1 padding point): min / typical / max, used for
# optimisation profiles. Clicks beyond the max are refused with a clear error.
NUM_POINTS_RANGE = (1, 4, 64)

# How the image embedding passes from encoder to decoder: "nchw" is SAM's 1 x C x h x w; "tokens" is
# 1 x (h w) x C, row-major over the grid, which the decoder's image-token products read without a transpose.
EMBEDDING_LAYOUTS = ("nchw", "tokens")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a name, a dtype name and a shape whose str entries are dynamic axes."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))

    def check(self, array: np.ndarray, dims: dict[str, int]) -> None:
        """Raise InputError unless `array` fits this spec; binds dynamic axes in `dims` consistently."""
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(self.dtype):
            got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise InputError(f"graph input {self.name!r} must be {self.dtype}, got {got}")
        if array.ndim != len(self.shape):
            raise InputError(f"graph input {self.name!r} must have shape {list(self.shape)}, got {list(array.shape)}")
        for axis, (want, got) in enumerate(zip(self.shape, array.shape)):
            if isinstance(want, str):
                if dims.setdefault(want, got) != got:
                    raise InputError(f"dynamic axis {want!r} is {dims[want]} elsewhere but {got} in {self.name!r}")
            elif want != got:
                raise InputError(f"graph input {self.name!r} must have shape {list(self.shape)}, got {list(array.shape)}")


@dataclass(frozen=True)
class GraphContract:
    """Inputs and outputs of one graph, the ranges of its dynamic axes, and graph-specific facts.

    Attributes:
        inputs, outputs: tensor specs in graph order.
        dynamic_axes: axis name -> (min, opt, max).
        extra: e.g. the decoder's `candidates` ({"single": [0], "multi": [1, 2, 3]}).
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "dynamic_axes": {name: list(span) for name, span in self.dynamic_axes.items()},
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GraphContract":
        extra = {k: v for k, v in data.items() if k not in ("inputs", "outputs", "dynamic_axes")}
        return cls(
            tuple(TensorSpec.from_dict(d) for d in data["inputs"]),
            tuple(TensorSpec.from_dict(d) for d in data["outputs"]),
            {name: tuple(span) for name, span in data.get("dynamic_axes", {}).items()},
            extra,
        )

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Raise InputError unless `feeds` holds exactly the inputs, with fitting dtypes, shapes and axis ranges."""
        missing = [name for name in self.input_names if name not in feeds]
        unknown = [name for name in feeds if name not in self.input_names]
        if missing or unknown:
            raise InputError(f"graph feeds do not match the contract: missing {missing}, unknown {unknown}")
        dims: dict[str, int] = {}
        for spec in self.inputs:
            spec.check(feeds[spec.name], dims)
        for name, value in dims.items():
            low, _, high = self.dynamic_axes.get(name, (0, 0, 1 << 31))
            if not low <= value <= high:
                raise InputError(f"{name} = {value} is outside the supported range {low}..{high}")


def check_embedding_layout(layout: str) -> str:
    """`layout` when it is one of EMBEDDING_LAYOUTS; ValueError naming the choices otherwise."""
    if layout not in EMBEDDING_LAYOUTS:
        raise ValueError(f"unknown embedding layout {layout!r}; choose from {EMBEDDING_LAYOUTS}")
    return layout


def embedding_shape(embed_dim: int, grid: int, layout: str = "nchw") -> tuple[int, ...]:
    """Shape of the image embedding in `layout` (one of EMBEDDING_LAYOUTS)."""
    return (1, embed_dim, grid, grid) if check_embedding_layout(layout) == "nchw" else (1, grid * grid, embed_dim)


def embedding_layout(contract: GraphContract) -> str:
    """The embedding layout a graph contract uses: "tokens" for a 3-d embedding, else "nchw"."""
    names = [spec for spec in (*contract.inputs, *contract.outputs) if spec.name == ENCODER_OUTPUT]
    return "tokens" if names and len(names[0].shape) == 3 else "nchw"


def encoder_contract(input_size: int, embed_dim: int, grid: int, layout: str = "nchw") -> GraphContract:
    """Image encoder: 1 x 3 x S x S float32 preprocessed image -> embedding (1 x C x h x w, or 1 x h w x C in the
    tokens layout)."""
    return GraphContract(
        inputs=(TensorSpec(ENCODER_INPUT, "float32", (1, 3, input_size, input_size)),),
        outputs=(TensorSpec(ENCODER_OUTPUT, "float32", embedding_shape(embed_dim, grid, layout)),),
    )


def decoder_contract(embed_dim: int, grid: int, low_res_size: int, num_mask_tokens: int, layout: str = "nchw") -> GraphContract:
    """Prompt decoder in SAM's ONNX convention.

    Inputs: image_embeddings 1 x C x h x w (1 x h w x C in the tokens layout); point_coords 1 x N x 2 (model-frame x, y); point_labels 1 x N
    (1 fg, 0 bg, -1 padding, 2 / 3 box corners); mask_input 1 x 1 x L x L; has_mask_input (1,) 0 or 1.
    Outputs: iou_predictions 1 x T and low_res_masks 1 x T x L x L for all T mask tokens: token 0 is the
    single-mask output, tokens 1.. the multimask candidates (`candidates` says which).
    """
    return GraphContract(
        inputs=(
            TensorSpec("image_embeddings", "float32", embedding_shape(embed_dim, grid, layout)),
            TensorSpec("point_coords", "float32", (1, "num_points", 2)),
            TensorSpec("point_labels", "float32", (1, "num_points")),
            TensorSpec("mask_input", "float32", (1, 1, low_res_size, low_res_size)),
            TensorSpec("has_mask_input", "float32", (1,)),
        ),
        outputs=(
            TensorSpec("iou_predictions", "float32", (1, num_mask_tokens)),
            TensorSpec("low_res_masks", "float32", (1, num_mask_tokens, low_res_size, low_res_size)),
        ),
        dynamic_axes={"num_points": NUM_POINTS_RANGE},
        extra={"candidates": {"single": [0], "multi": list(range(1, num_mask_tokens))}},
    )
