"""Real images for checks and calibration when the caller has none: the development set, else synthetic phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io.dataset import default_data_root, read_dataset
from .io.images import read_image


def phantom(size: int = 320, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic grayscale "lesion" (bright ellipse in noisy tissue) as H x W x 3 uint8, with its H x W mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cx, cy = 0.45 + 0.2 * rng.random(), 0.35 + 0.2 * rng.random()
    mask = ((xx - cx * size) / (0.18 * size)) ** 2 + ((yy - cy * size) / (0.12 * size)) ** 2 <= 1.0
    body = ((xx - size / 2) / (0.45 * size)) ** 2 + ((yy - size / 2) / (0.4 * size)) ** 2 <= 1.0
    image = (20.0 + 70.0 * body + 90.0 * mask + rng.normal(0, 6, (size, size))).clip(0, 255).astype(np.uint8)
    return np.repeat(image[:, :, None], 3, axis=2), mask


def sample_images(count: int, root: str | Path | None = None) -> list[np.ndarray]:
    """`count` distinct H x W x 3 uint8 images spread over the dataset (default: the development set).

    Falls back to synthetic phantoms when no dataset is available.
    """
    root = Path(root) if root is not None else default_data_root()
    if root is None:
        return [phantom(seed=i)[0] for i in range(count)]
    images = sorted({item.image for item in read_dataset(root)})
    picks = np.linspace(0, len(images) - 1, num=min(count, len(images))).round().astype(int)
    return [read_image(images[i]) for i in picks]
