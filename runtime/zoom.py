"""Zoom for small objects: a crop window around a prompt, and the way prompts and masks cross it.

At a 256-pixel model input a 12-pixel nucleus of a 512-pixel image is 6 pixels wide. When a box (or the mask of
the first click) covers a small part of the image, the predictor can segment a window around it instead: the crop
is encoded at the model's input size like any image (and cached like any image), the prompts are shifted into the
crop, and the crop's masks are pasted back into the full image. The model's own transforms run unchanged on the
crop (`processing.preprocess_image`, `decoder_inputs`, `postprocess_logits`); this module only adds the window:

    original pixels --(- window origin)--> crop pixels --(processing)--> model frame
    crop masks --(paste at the window origin, background elsewhere)--> original pixels

Frames: a window is (x0, y0, x1, y1) in original pixels with exclusive maxima, inside the image. Low-resolution
logits of a zoomed prediction are in the window's frame; feed them back only with the same window.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .processing import Prompts

# Logit of the pixels outside a window: certainly background (sigmoid 0), finite so that arithmetic on logits stays
# finite.
OUTSIDE_LOGIT = -1.0e4

Window = tuple[int, int, int, int]


@dataclass(frozen=True)
class ZoomPolicy:
    """When and how to zoom (plain data, JSON-ready).

    Attributes:
        max_fraction: zoom when the prompt's box has its longer side below this fraction of the image's longer side.
        context: window side as a multiple of the box's longer side (context around the object).
        min_side: smallest window side in pixels (tiny objects keep some surroundings).
        boxes: zoom for box prompts.
        clicks: zoom for clicks: after the first click, the mask's box (with every click) decides the window,
            which then stays for the object's later clicks.
    """

    max_fraction: float = 0.25
    context: float = 3.0
    min_side: int = 96
    boxes: bool = True
    clicks: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_fraction <= 1 or self.context < 1 or self.min_side < 1:
            raise ValueError(f"invalid zoom policy {self}: need 0 < max_fraction <= 1, context >= 1, min_side >= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ZoomPolicy":
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown zoom policy fields: {unknown}")
        return cls(**data)


def is_small_box(box: Sequence[float], image_size: tuple[int, int], max_fraction: float = ZoomPolicy.max_fraction) -> bool:
    """Whether an (x0, y0, x1, y1) box (inclusive pixel indices) is small enough to zoom on in an (H, W) image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0 + 1, y1 - y0 + 1)
    return side < max_fraction * max(image_size)


def zoom_window(box: Sequence[float], image_size: tuple[int, int], context: float = ZoomPolicy.context,
                min_side: int = ZoomPolicy.min_side) -> Window:
    """A square window around a box, `context` times its longer side (at least `min_side`), inside the image.

    The window is centred on the box and shifted, not shrunk, where it would cross the border; a window larger
    than the image along an axis becomes the whole axis.

    Args:
        box: (x0, y0, x1, y1), inclusive pixel indices.
        image_size: (H, W).

    Returns:
        (x0, y0, x1, y1) with exclusive maxima, 0 <= x0 < x1 <= W, 0 <= y0 < y1 <= H.
    """
    height, width = int(image_size[0]), int(image_size[1])
    bx0, by0, bx1, by1 = (float(v) for v in box)
    side = int(round(max(context * max(bx1 - bx0 + 1, by1 - by0 + 1), min_side)))

    def axis(low: float, high: float, size: int) -> tuple[int, int]:
        if side >= size:
            return 0, size
        start = int(np.floor((low + high + 1) / 2 - side / 2 + 0.5))
        start = min(max(start, 0), size - side)
        return start, start + side

    x0, x1 = axis(bx0, bx1, width)
    y0, y1 = axis(by0, by1, height)
    return x0, y0, x1, y1


def union_box(boxes: Sequence[Sequence[float] | None] = (), points: np.ndarray | None = None) -> np.ndarray | None:
    """(x0, y0, x1, y1) around every given box and point (N x 2 (x, y)), or None when there is nothing."""
    corners = [np.asarray(box, dtype=np.float64).reshape(2, 2) for box in boxes if box is not None]
    if points is not None and len(points):
        corners.append(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    if not corners:
        return None
    every = np.concatenate(corners)
    return np.concatenate([every.min(axis=0), every.max(axis=0)])


def box_window(policy: ZoomPolicy | None, box: Sequence[float] | None, image_size: tuple[int, int]) -> Window | None:
    """The window a box prompt is segmented in under `policy`, or None (no zoom: no policy, no box, a large box)."""
    if policy is None or not policy.boxes or box is None or not is_small_box(box, image_size, policy.max_fraction):
        return None
    return zoom_window(box, image_size, policy.context, policy.min_side)


def mask_window(policy: ZoomPolicy | None, mask: np.ndarray, points: np.ndarray | None,
                image_size: tuple[int, int]) -> Window | None:
    """The window for an object's later clicks: around its H x W mask and its clicks, or None (no zoom)."""
    if policy is None or not policy.clicks or not np.asarray(mask).any():
        return None
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    box = union_box([(cols[0], rows[0], cols[-1], rows[-1])], points)
    if not is_small_box(box, image_size, policy.max_fraction):
        return None
    return zoom_window(box, image_size, policy.context, policy.min_side)


def contains(window: Window, point: Sequence[float]) -> bool:
    """Whether an (x, y) pixel lies inside a window."""
    x0, y0, x1, y1 = window
    return x0 <= point[0] < x1 and y0 <= point[1] < y1


def check_window(window: Sequence[int], image_size: tuple[int, int]) -> Window:
    """Validate a window against an (H, W) image.

    Raises:
        InputError: not four integers, empty, or outside the image.
    """
    try:
        values = [int(v) for v in window]
    except (TypeError, ValueError) as exc:
        raise InputError(f"a zoom window is (x0, y0, x1, y1) integers, got {window!r}") from exc
    if len(values) != 4 or any(float(v) != float(w) for v, w in zip(values, window)):
        raise InputError(f"a zoom window is (x0, y0, x1, y1) integers, got {window!r}")
    x0, y0, x1, y1 = values
    height, width = image_size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InputError(f"zoom window {tuple(values)} is empty or outside the {width} x {height} image")
    return x0, y0, x1, y1


def crop(image: np.ndarray, window: Window) -> np.ndarray:
    """The window's pixels of an H x W (x C) array, contiguous."""
    x0, y0, x1, y1 = window
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def prompts_into(prompts: Prompts, window: Window) -> Prompts:
    """Prompts in original pixels -> the window's pixels.

    Points outside the window are dropped (they say nothing about the crop's content); a box is clipped to it.

    Raises:
        InputError: no prompt left inside the window.
    """
    x0, y0, x1, y1 = window
    offset = np.array([x0, y0], dtype=np.float64)
    coords = labels = box = None
    if prompts.point_coords is not None:
        points, point_labels = prompts.point_coords, prompts.point_labels
        padding = point_labels == -1
        inside = ((points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)) | padding
        if (inside & ~padding).any():
            coords = np.where(padding[inside, None], 0.0, points[inside] - offset)
            labels = point_labels[inside]
    if prompts.box is not None:
        box = np.clip(prompts.box - np.tile(offset, 2), 0, np.array([x1 - x0, y1 - y0] * 2, dtype=np.float64))
    if coords is None and box is None:
        raise InputError(f"no point or box prompt lies inside the zoom window {window}")
    return Prompts(coords, labels, box, prompts.mask_input)


def paste(maps: np.ndarray, window: Window, image_size: tuple[int, int], fill: float = OUTSIDE_LOGIT) -> np.ndarray:
    """C x h x w maps of a window -> C x H x W maps of the image, `fill` outside the window.

    Raises:
        ValueError: maps whose size is not the window's.
    """
    x0, y0, x1, y1 = window
    maps = np.asarray(maps)
    if maps.shape[-2:] != (y1 - y0, x1 - x0):
        raise ValueError(f"maps of {maps.shape[-2:]} do not fit the window {window}")
    out = np.full((*maps.shape[:-2], *image_size), fill, dtype=maps.dtype)
    out[..., y0:y1, x0:x1] = maps
    return out


ZOOM_CHOICES = ("off", "boxes", "clicks", "all")


def add_arguments(parser: argparse.ArgumentParser, default: str = "off") -> None:
    """The zoom flags shared by the CLIs that segment (`policy_from_args` reads them)."""
    defaults = ZoomPolicy()
    parser.add_argument("--zoom", choices=ZOOM_CHOICES, default=default,
                        help=f"segment small objects in a crop around them: for boxes, for clicks after the first, "
                             f"for both, or off (default {default})")
    parser.add_argument("--zoom-max-fraction", type=float, default=defaults.max_fraction, metavar="F",
                        help=f"zoom when the object's box side is below F of the image side (default {defaults.max_fraction})")
    parser.add_argument("--zoom-context", type=float, default=defaults.context, metavar="K",
                        help=f"window side as K times the box side (default {defaults.context})")
    parser.add_argument("--zoom-min-side", type=int, default=defaults.min_side, metavar="PX",
                        help=f"smallest window side in pixels (default {defaults.min_side})")


def policy_from_args(args: argparse.Namespace) -> ZoomPolicy | None:
    """The `ZoomPolicy` of parsed `add_arguments` flags, or None when zoom is off."""
    choice = getattr(args, "zoom", "off")
    if choice == "off":
        return None
    try:
        return ZoomPolicy(max_fraction=args.zoom_max_fraction, context=args.zoom_context, min_side=args.zoom_min_side,
                          boxes=choice in ("boxes", "all"), clicks=choice in ("clicks", "all"))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
