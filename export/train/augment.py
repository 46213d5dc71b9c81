"""Augmented views of training images: a fixed number per image, each deterministic, so its embedding is cached.

With a frozen encoder an augmentation is only affordable when its embedding is computed once; so every image gets
`count` views drawn once from the run's seed (`sample_views`), and the embedding cache stores each view like any
other image (its key is the view's pixels). A view is, in this order:

1. a crop: either a zoom window around one object, as the runtime's zoom crops it (`zoom.zoom_window`: the
   object's box grown by a context factor, at least a minimum side), or a random window of 60-100 % of each side;
2. a rotation by a multiple of 90 degrees and a horizontal flip;
3. a gamma curve on the [0, 1] intensities;
4. Gaussian noise of a few grey levels.

Masks go through steps 1-2 only (nearest-neighbour, exact). An object that a crop cuts through (less than
`keep_fraction` of its pixels inside) is dropped from that view, so no training target is a truncated object.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sammed_edge.runtime import metrics, processing, zoom


@dataclass(frozen=True)
class AugmentSettings:
    """How views are drawn.

    Attributes:
        zoom_prob: probability that a view is a zoom window around one of the image's objects (only objects whose
            box side is below `zoom.ZoomPolicy.max_fraction` of the image's are zoomed on).
        crop_prob: probability of a random crop (when not zoomed).
        rotate_prob: probability of a 90/180/270 degree rotation; flip_prob: of a horizontal flip.
        gamma_prob: probability of a gamma curve, drawn log-uniformly in `gamma_range`.
        noise_prob: probability of additive Gaussian noise with a standard deviation drawn in `noise_range` (grey
            levels of 0-255).
        keep_fraction: share of an object's pixels a crop must keep for the object to stay in the view.
    """

    zoom_prob: float = 0.35
    crop_prob: float = 0.3
    rotate_prob: float = 0.5
    flip_prob: float = 0.5
    gamma_prob: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = 0.3
    noise_range: tuple[float, float] = (2.0, 8.0)
    keep_fraction: float = 0.95


@dataclass(frozen=True)
class View:
    """One augmented view of an image.

    Attributes:
        crop: (x0, y0, x1, y1) window in the original image's pixels, exclusive maxima, or None for the whole image.
        rotate: quarter turns counter-clockwise (0-3), applied after the crop.
        flip: mirror left-right after the rotation.
        gamma: exponent on [0, 1] intensities (1.0: none).
        noise: standard deviation of the added noise in grey levels (0: none).
        seed: seed of the noise.
    """

    crop: tuple[int, int, int, int] | None = None
    rotate: int = 0
    flip: bool = False
    gamma: float = 1.0
    noise: float = 0.0
    seed: int = 0

    @property
    def identity(self) -> bool:
        return self == View()


def view_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one image's views: a stable hash of (run seed, image name)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _random_crop(shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    height, width = shape
    ch, cw = (max(1, int(round(side * rng.uniform(0.6, 1.0)))) for side in (height, width))
    y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
    return x0, y0, x0 + cw, y0 + ch


def sample_views(shape: tuple[int, int], masks: Sequence[np.ndarray], count: int, rng: np.random.Generator,
                 settings: AugmentSettings = AugmentSettings()) -> list[View]:
    """`count` views of an H x W image with the given object masks (H x W bool each).

    Returns:
        The views, none of them the identity (view 0 of training, the image itself, is not among them).
    """
    shape = (int(shape[0]), int(shape[1]))
    small = [mask for mask in masks if mask.any() and zoom.is_small_box(metrics.box_from_mask(mask), shape)]
    views: list[View] = []
    while len(views) < count:
        crop = None
        if small and rng.random() < settings.zoom_prob:
            box = metrics.box_from_mask(small[int(rng.integers(len(small)))])
            # the context factor varies around the runtime's, so the model sees the object at several zooms
            crop = zoom.zoom_window(box, shape, context=float(rng.uniform(2.0, 4.0)))
        elif rng.random() < settings.crop_prob:
            crop = _random_crop(shape, rng)
        view = View(
            crop=crop,
            rotate=int(rng.integers(1, 4)) if rng.random() < settings.rotate_prob else 0,
            flip=bool(rng.random() < settings.flip_prob),
            gamma=float(np.exp(rng.uniform(*np.log(settings.gamma_range)))) if rng.random() < settings.gamma_prob else 1.0,
            noise=float(rng.uniform(*settings.noise_range)) if rng.random() < settings.noise_prob else 0.0,
            seed=int(rng.integers(2**31)),
        )
        if not view.identity:
            views.append(view)
    return views


def _geometry(array: np.ndarray, view: View) -> np.ndarray:
    if view.crop is not None:
        x0, y0, x1, y1 = view.crop
        array = array[y0:y1, x0:x1]
    if view.rotate:
        array = np.rot90(array, view.rotate)
    if view.flip:
        array = array[:, ::-1]
    return np.ascontiguousarray(array)


def apply_image(image: np.ndarray, view: View) -> np.ndarray:
    """The view of an H x W x 3 uint8 image (uint8, h x w x 3)."""
    out = _geometry(processing.as_rgb_uint8(image), view)
    if view.gamma == 1.0 and view.noise == 0.0:
        return out
    values = out.astype(np.float32) / 255.0
    if view.gamma != 1.0:
        values = values ** np.float32(view.gamma)
    values *= 255.0
    if view.noise:
        # one noise field for all channels keeps grey images grey
        noise = np.random.default_rng(view.seed).normal(0.0, view.noise, out.shape[:2]).astype(np.float32)
        values += noise[:, :, None]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def apply_mask(mask: np.ndarray, view: View, keep_fraction: float = AugmentSettings.keep_fraction) -> np.ndarray | None:
    """The view of an H x W bool mask, or None when the view's crop keeps less than `keep_fraction` of it."""
    mask = np.asarray(mask, dtype=bool)
    out = _geometry(mask, view)
    total = int(mask.sum())
    if total == 0 or out.sum() < keep_fraction * total:
        return None
    return out
