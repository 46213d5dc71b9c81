"""Image preprocessing, prompt coordinate transforms and mask postprocessing for every model family.

This module is the only implementation of these steps in the project: the PyTorch reference predictor, the
export checks, every runtime backend and the demo import it. A family's behaviour is a `ProcessingPolicy`,
plain data that a bundle manifest can store, so that a vendor's runtime needs no family-specific code.

Frames used below:
    original: pixel coordinates (x, y) of the image the caller passed, H x W.
    model: pixel coordinates in the square `input_size` x `input_size` image fed to the encoder; the resized
        image occupies the top-left `resized_size` region, the rest is padding.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import InputError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Largest image side accepted by `as_rgb_uint8`; bigger inputs are almost always a wrong array (a volume, a
# mosaic) and would need gigabytes for full-resolution masks.
MAX_IMAGE_SIDE = 16384

INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
_CHOICES = {
    "resize": ("stretch", "longest_side"),
    "interpolation": tuple(INTERPOLATIONS),
    "normalize": ("mean_std", "min_max"),
    "prompt_scale": ("resized_size", "longest_side"),
    "box_rounding": ("none", "floor"),
    "mask_input": ("probability", "logits"),
}


@dataclass(frozen=True)
class ProcessingPolicy:
    """How one model family turns an image and prompts into model inputs, and logits back into masks.

    Attributes:
        family: model family name ("sam_med2d", "lite_medsam", "sam").
        input_size: side of the square image the encoder takes.
        low_res_size: side of the decoder's low-resolution logits, which is also the mask-prompt side.
        resize: "stretch" resizes both axes to input_size (aspect ignored, no padding); "longest_side" scales
            the longest side to input_size and zero-pads bottom/right.
        interpolation: OpenCV interpolation of the image resize ("nearest", "linear", "area").
        normalize: "mean_std" is (x - pixel_mean) / pixel_std per channel on the 0-255 scale; "min_max" maps the
            global minimum and maximum of the image to 0 and 1.
        normalize_before_resize: normalise the full-size image, then resize the float image (SAM-Med2D), or
            resize the uint8 image first (LiteMedSAM, SAM).
        pixel_mean, pixel_std: per-channel constants for "mean_std".
        prompt_scale: "resized_size" scales x by w/W and y by h/H (the resized region's size over the original);
            "longest_side" scales both by input_size / max(H, W).
        box_rounding: "floor" truncates transformed box corners to integers (LiteMedSAM's inference script).
        mask_input: what the family was trained to take as a mask prompt: sigmoid "probability" (SAM-Med2D)
            or raw "logits" (SAM).
        mask_threshold: logit threshold of a foreground pixel.
    """

    family: str
    input_size: int
    low_res_size: int
    resize: str
    interpolation: str
    normalize: str
    normalize_before_resize: bool
    prompt_scale: str
    box_rounding: str
    mask_input: str
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ProcessingPolicy.{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.input_size <= 0 or self.low_res_size <= 0:
            raise ValueError("ProcessingPolicy sizes must be positive")
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in a bundle manifest."""
        out = dataclasses.asdict(self)
        out["pixel_mean"] = list(self.pixel_mean)
        out["pixel_std"] = list(self.pixel_std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProcessingPolicy":
        """Inverse of `to_dict`; unknown keys are an error so that a newer manifest is not misread."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown processing policy fields: {unknown}")
        return cls(**data)


FAMILY_POLICIES: dict[str, ProcessingPolicy] = {
    # SAM-Med2D's predictor: normalise, then nearest-neighbour stretch to 256x256; prompts scaled per axis;
    # logits 64 -> 256 -> original; mask prompts are probabilities.
    "sam_med2d": ProcessingPolicy(
        family="sam_med2d", input_size=256, low_res_size=64, resize="stretch", interpolation="nearest",
        normalize="mean_std", normalize_before_resize=True, prompt_scale="resized_size", box_rounding="none",
        mask_input="probability",
    ),
    # LiteMedSAM's official 2D inference: longest side to 256 with INTER_AREA, global min-max, zero pad; boxes
    # scaled by 256/max(H, W) and truncated; logits cropped to the resized region, then resized to the original.
    "lite_medsam": ProcessingPolicy(
        family="lite_medsam", input_size=256, low_res_size=256, resize="longest_side", interpolation="area",
        normalize="min_max", normalize_before_resize=False, prompt_scale="longest_side", box_rounding="floor",
        mask_input="logits",
    ),
    # Original SAM: longest side to 1024, normalise, pad. SAM resizes with PIL's antialiased bilinear; OpenCV's
    # INTER_AREA is the closest OpenCV filter for the usual downscale (documented deviation).
    "sam": ProcessingPolicy(
        family="sam", input_size=1024, low_res_size=256, resize="longest_side", interpolation="area",
        normalize="mean_std", normalize_before_resize=False, prompt_scale="resized_size", box_rounding="none",
        mask_input="logits",
    ),
}


def family_policy(family: str, **overrides: Any) -> ProcessingPolicy:
    """The default policy of `family`, with fields replaced by `overrides` (e.g. input_size for other sizes)."""
    if family not in FAMILY_POLICIES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FAMILY_POLICIES)}")
    return dataclasses.replace(FAMILY_POLICIES[family], **overrides)


@dataclass(frozen=True)
class ImageGeometry:
    """Where an image went: its original (H, W) and the (h, w) region it fills in the model input."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]


def resized_size(original_size: tuple[int, int], policy: ProcessingPolicy) -> tuple[int, int]:
    """Size (h, w) of the resized image inside the model input."""
    height, width = original_size
    side = policy.input_size
    if policy.resize == "stretch":
        return side, side
    scale = side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Validate an image and return it as a contiguous H x W x 3 uint8 array.

    Args:
        image: H x W (grayscale, replicated to 3 channels) or H x W x 3 (RGB) uint8 array.

    Raises:
        InputError: not an array, wrong dtype or shape, empty, or larger than MAX_IMAGE_SIDE.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(
            f"image must be uint8 (0-255), got {image.dtype}; window or rescale it first "
            "(medical images: apply the window/level you want to see)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be H x W or H x W x 3 (RGB), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image is empty (shape {image.shape})")
    if max(image.shape[:2]) > MAX_IMAGE_SIDE:
        raise InputError(f"image of {image.shape[0]} x {image.shape[1]} exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    return np.ascontiguousarray(image)


def normalize_image(image: np.ndarray, policy: ProcessingPolicy) -> np.ndarray:
    """Normalise an H x W x 3 image (uint8 or float) as the policy says; returns float32."""
    if policy.normalize == "mean_std":
        mean = np.asarray(policy.pixel_mean, dtype=np.float32)
        std = np.asarray(policy.pixel_std, dtype=np.float32)
        return ((image - mean) / std).astype(np.float32, copy=False)
    values = image.astype(np.float64)
    low = values.min()
    span = max(values.max() - low, 1e-8)
    return ((values - low) / span).astype(np.float32)


def preprocess_image(image: Any, policy: ProcessingPolicy) -> tuple[np.ndarray, ImageGeometry]:
    """Turn an image into the encoder's input.

    Args:
        image: H x W or H x W x 3 uint8 RGB array.
        policy: the model family's processing policy.

    Returns:
        (tensor, geometry): tensor is 1 x 3 x S x S float32 with S = policy.input_size.
    """
    rgb = as_rgb_uint8(image)
    geometry = ImageGeometry(original_size=(rgb.shape[0], rgb.shape[1]), resized_size=resized_size(rgb.shape[:2], policy))
    height, width = geometry.resized_size
    interpolation = INTERPOLATIONS[policy.interpolation]
    if policy.normalize_before_resize:
        resized = cv2.resize(normalize_image(rgb, policy), (width, height), interpolation=interpolation)
    else:
        resized = normalize_image(cv2.resize(rgb, (width, height), interpolation=interpolation), policy)
    side = policy.input_size
    canvas = np.zeros((side, side, 3), dtype=np.float32)
    canvas[:height, :width] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]), geometry


# ----------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class Prompts:
    """Validated prompts in original-image pixels.

    Attributes:
        point_coords: N x 2 float64 (x, y) or None.
        point_labels: N int64 in {1 foreground, 0 background, -1 padding} or None.
        box: 4 float64 (x0, y0, x1, y1) or None.
        mask_input: 1 x 1 x L x L float32 low-resolution mask prompt or None.
    """

    point_coords: np.ndarray | None
    point_labels: np.ndarray | None
    box: np.ndarray | None
    mask_input: np.ndarray | None


def _finite_float_array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be numeric, got {type(value).__name__}") from exc
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values")
    return array


def check_prompts(
    geometry: ImageGeometry,
    policy: ProcessingPolicy,
    point_coords: Any = None,
    point_labels: Any = None,
    box: Any = None,
    mask_input: Any = None,
) -> Prompts:
    """Validate SAM-style prompts given in original-image pixels.

    Args:
        geometry: the image the prompts refer to.
        policy: the model family's policy (for the mask-prompt size).
        point_coords: N x 2 (x, y) pixels, inside the image (padding points excepted).
        point_labels: N labels: 1 foreground, 0 background, -1 padding.
        box: 4 values (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, inside the image.
        mask_input: L x L or 1 x L x L (or 1 x 1 x L x L) float mask prompt, L = policy.low_res_size, passed
            to the model as given (probabilities for SAM-Med2D, logits for SAM).

    Raises:
        InputError: naming the first problem found.
    """
    height, width = geometry.original_size
    coords = labels = box_array = mask = None
    if (point_coords is None) != (point_labels is None):
        raise InputError("point_coords and point_labels must be given together")
    if point_coords is not None:
        coords = _finite_float_array(point_coords, "point_coords")
        if coords.ndim == 1 and coords.shape == (2,):
            coords = coords[None]
        if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] == 0:
            raise InputError(f"point_coords must be N x 2 (x, y) with N >= 1, got shape {coords.shape}")
        raw_labels = np.asarray(point_labels)
        if raw_labels.ndim == 0:
            raw_labels = raw_labels[None]
        if raw_labels.ndim != 1 or raw_labels.shape[0] != coords.shape[0]:
            raise InputError(
                f"point_labels must hold one label per point: {coords.shape[0]} points, labels of shape {raw_labels.shape}"
            )
        if not np.issubdtype(raw_labels.dtype, np.number) or not np.all(np.isfinite(raw_labels)):
            raise InputError(f"point_labels must be numbers, got {raw_labels.dtype}")
        labels = raw_labels.astype(np.int64)
        bad = ~np.isin(raw_labels, (0, 1, -1))
        if bad.any():
            raise InputError(
                f"point_labels must be 1 (foreground), 0 (background) or -1 (padding); got {raw_labels[bad].tolist()}"
            )
        real = labels != -1
        coords = np.where(real[:, None], coords, 0.0)  # padding points carry no position (SAM puts them at 0, 0)
        outside = real & ((coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height))
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise InputError(
                f"point {first} at (x={coords[first, 0]:g}, y={coords[first, 1]:g}) is outside the "
                f"{width} x {height} (W x H) image"
            )
    if box is not None:
        box_array = _finite_float_array(box, "box").reshape(-1) if np.size(box) == 4 else None
        if box_array is None:
            raise InputError(f"box must hold 4 values (x0, y0, x1, y1), got shape {np.shape(box)}")
        x0, y0, x1, y1 = box_array
        if x1 < x0 or y1 < y0:
            raise InputError(f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g}) has x1 < x0 or y1 < y0")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise InputError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) reaches outside the {width} x {height} (W x H) image")
    if mask_input is not None:
        mask = np.asarray(mask_input)
        side = policy.low_res_size
        if mask.dtype.kind not in "fiub":
            raise InputError(f"mask_input must be a float array, got {mask.dtype}")
        if mask.shape not in ((side, side), (1, side, side), (1, 1, side, side)):
            raise InputError(f"mask_input must be {side} x {side} (or 1 x {side} x {side}), got shape {mask.shape}")
        mask = mask.astype(np.float32).reshape(1, 1, side, side)
        if not np.all(np.isfinite(mask)):
            raise InputError("mask_input contains NaN or infinite values")
    if coords is None and box_array is None and mask is None:
        raise InputError("no prompt given: pass point_coords/point_labels, a box, or a mask_input")
    return Prompts(point_coords=coords, point_labels=labels, box=box_array, mask_input=mask)


def prompt_scale(geometry: ImageGeometry, policy: ProcessingPolicy) -> tuple[float, float]:
    """Scale factors (sx, sy) from original pixels to model-input pixels."""
    height, width = geometry.original_size
    if policy.prompt_scale == "longest_side":
        scale = policy.input_size / max(height, width)
        return scale, scale
    new_height, new_width = geometry.resized_size
    return new_width / width, new_height / height


def _scale_to_model(coords: np.ndarray, geometry: ImageGeometry, policy: ProcessingPolicy) -> np.ndarray:
    sx, sy = prompt_scale(geometry, policy)
    out = np.asarray(coords, dtype=np.float64).copy()
    out[..., 0] = out[..., 0] * sx
    out[..., 1] = out[..., 1] * sy
    return out


def transform_points(coords: np.ndarray, geometry: ImageGeometry, policy: ProcessingPolicy) -> np.ndarray:
    """Map N x 2 original-pixel (x, y) points into the model frame; returns float32 N x 2."""
    return _scale_to_model(coords, geometry, policy).astype(np.float32)


def transform_box(box: np.ndarray, geometry: ImageGeometry, policy: ProcessingPolicy) -> np.ndarray:
    """Map an (x0, y0, x1, y1) original-pixel box into the model frame; returns float32 (4,)."""
    corners = _scale_to_model(np.asarray(box, dtype=np.float64).reshape(2, 2), geometry, policy)
    if policy.box_rounding == "floor":
        corners = np.floor(corners)
    return corners.astype(np.float32).reshape(4)


def expand_box(box: Any, margin: float, image_size: tuple[int, int]) -> np.ndarray:
    """An (x0, y0, x1, y1) box of inclusive pixel indices grown by `margin` pixels on every side, clipped to an
    (H, W) image; float64 (4,)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    height, width = image_size
    return np.array([max(x0 - margin, 0.0), max(y0 - margin, 0.0), min(x1 + margin, width - 1.0),
                     min(y1 + margin, height - 1.0)], dtype=np.float64)


def decoder_inputs(prompts: Prompts, geometry: ImageGeometry, policy: ProcessingPolicy) -> dict[str, np.ndarray]:
    """Assemble the prompt decoder's inputs in SAM's ONNX convention.

    Points come first, then either the two box corners (labels 2 and 3) or, when there is no box, one padding
    point (0, 0) with label -1, exactly as SAM's prompt encoder orders its sparse tokens.

    Returns:
        point_coords 1 x N x 2 float32 (model frame), point_labels 1 x N float32, mask_input 1 x 1 x L x L
        float32, has_mask_input (1,) float32.
    """
    coords: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    if prompts.point_coords is not None:
        coords.append(transform_points(prompts.point_coords, geometry, policy))
        labels.append(prompts.point_labels.astype(np.float32))
    if prompts.box is not None:
        coords.append(transform_box(prompts.box, geometry, policy).reshape(2, 2))
        labels.append(np.array([2, 3], dtype=np.float32))
    else:
        coords.append(np.zeros((1, 2), dtype=np.float32))
        labels.append(np.array([-1], dtype=np.float32))
    side = policy.low_res_size
    has_mask = prompts.mask_input is not None
    return {
        "point_coords": np.concatenate(coords)[None].astype(np.float32),
        "point_labels": np.concatenate(labels)[None].astype(np.float32),
        "mask_input": prompts.mask_input if has_mask else np.zeros((1, 1, side, side), dtype=np.float32),
        "has_mask_input": np.array([1.0 if has_mask else 0.0], dtype=np.float32),
    }


def mask_prompt_from_logits(low_res_logits: np.ndarray, policy: ProcessingPolicy) -> np.ndarray:
    """The mask prompt for the next click from a previous L x L low-res logit map, in the family's convention."""
    logits = np.asarray(low_res_logits, dtype=np.float32)
    if policy.mask_input == "probability":
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    return logits.copy()


# ---------------------------------------------------------------------------------------------- masks


@functools.lru_cache(maxsize=64)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation, half-pixel centres, no antialias.

    Follows PyTorch's CPU `interpolate(mode="bilinear", align_corners=False)`: a float32 scale, the source
    coordinate computed in double and stored as float32, so masks match the official post-processing. Cached per
    size pair, so the arrays are read-only.
    """
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    src = ((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    index0 = np.minimum(src.astype(np.int64), in_size - 1)
    index1 = np.minimum(index0 + 1, in_size - 1)
    weight1 = (src - index0.astype(np.float32)).astype(np.float32)
    weight0 = (np.float32(1.0) - weight1).astype(np.float32)
    for array in (index0, index1, weight0, weight1):
        array.flags.writeable = False
    return index0, index1, weight0, weight1


_ROW_BLOCK = 64  # output rows per step of the row pass: its temporaries stay in the CPU cache


def resize_bilinear(maps: np.ndarray, size: tuple[int, int], crop: tuple[int, int] | None = None,
                    threshold: float | None = None) -> np.ndarray:
    """Bilinear resize of C x h x w float32 maps to C x H x W (align_corners=False, no antialias).

    `crop` (h', w') computes only the top-left h' x w' of the result (the values of resizing, then cropping);
    `threshold` returns the bool maps `result > threshold`. Without either, returns the input itself when it
    already has the requested size."""
    maps = np.asarray(maps, dtype=np.float32)
    keep_h, keep_w = crop or size
    if maps.shape[-2:] == tuple(size):
        maps = maps[..., :keep_h, :keep_w]
        return maps if threshold is None else maps > threshold
    r0, r1, rw0, rw1 = (taps[:keep_h] for taps in _linear_taps(maps.shape[-2], size[0]))
    c0, c1, cw0, cw1 = (taps[:keep_w] for taps in _linear_taps(maps.shape[-1], size[1]))
    # x0 * w0 + x1 * w1 along the columns, then the rows, each product rounded to float32 before the sum; `take`
    # and in-place products, the rows in cache-sized blocks: the same values in a third of the time of fancy indexing
    cols = np.take(maps, c0, axis=-1)
    cols *= cw0
    right = np.take(maps, c1, axis=-1)
    right *= cw1
    cols += right
    out = np.empty((*maps.shape[:-2], keep_h, keep_w), dtype=np.float32 if threshold is None else bool)
    upper, lower = (np.empty((*maps.shape[:-2], min(_ROW_BLOCK, keep_h), keep_w), np.float32) for _ in range(2))
    for top in range(0, keep_h, _ROW_BLOCK):
        rows = slice(top, min(top + _ROW_BLOCK, keep_h))
        above = out[..., rows, :] if threshold is None else upper[..., : rows.stop - top, :]
        below = lower[..., : rows.stop - top, :]
        np.multiply(np.take(cols, r0[rows], axis=-2, out=above, mode="clip"), rw0[rows, None], out=above)
        np.multiply(np.take(cols, r1[rows], axis=-2, out=below, mode="clip"), rw1[rows, None], out=below)
        above += below
        if threshold is not None:
            np.greater(above, threshold, out=out[..., rows, :])
    return out


def postprocess_logits(low_res: np.ndarray, geometry: ImageGeometry, policy: ProcessingPolicy,
                       threshold: float | None = None) -> np.ndarray:
    """Low-resolution logits (C x L x L) to full-resolution logits (C x H x W) float32, or with `threshold` the
    bool masks `logits > threshold` (the same values, without a full-resolution float array).

    Upsamples to the model input size, crops the padding away, then resizes to the original image size: for
    SAM-Med2D 64 -> 256 -> H x W, for LiteMedSAM crop -> H x W, for SAM 256 -> 1024 (its kept part) -> H x W.
    """
    side = policy.input_size
    maps = resize_bilinear(low_res, (side, side), crop=geometry.resized_size)
    out = resize_bilinear(maps, geometry.original_size, threshold=threshold)
    return out.copy() if np.shares_memory(out, low_res) else np.ascontiguousarray(out)


def mask_to_low_res(mask: np.ndarray, policy: ProcessingPolicy) -> np.ndarray:
    """An H x W mask in the low-resolution frame of the decoder's logits: the inverse path of `postprocess_logits`.

    The mask is resized to the image's place in the model input, padded like the image, then resized to L x L.

    Returns:
        L x L float32 foreground fraction in 0..1 (L = policy.low_res_size).
    """
    mask = np.asarray(mask, dtype=np.float32)
    height, width = resized_size(mask.shape[:2], policy)
    side = policy.input_size
    canvas = np.zeros((1, side, side), dtype=np.float32)
    canvas[:, :height, :width] = resize_bilinear(mask[None], (height, width))
    return resize_bilinear(canvas, (policy.low_res_size,) * 2)[0].copy()
