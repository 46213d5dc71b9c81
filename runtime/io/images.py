"""2D raster images (PNG, JPEG, TIFF, BMP) to the H x W x 3 uint8 RGB arrays the predictors take, and masks back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError


def read_image(path: str | Path) -> np.ndarray:
    """Read a raster image as H x W x 3 uint8 RGB.

    Grayscale images are replicated to 3 channels, an alpha channel is dropped, and 16-bit images are scaled
    from their own minimum / maximum to 0-255.

    Raises:
        InputError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise InputError(f"{path} is not a readable image (PNG, JPEG, TIFF or BMP)")
    if image.dtype != np.uint8:
        values = image.astype(np.float64)
        low, high = values.min(), values.max()
        image = np.round((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, ::-1])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask image (nonzero = foreground) as H x W bool."""
    path = Path(path)
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InputError(f"{path} is not a readable mask image")
    return mask > 0


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write an H x W mask as an 8-bit PNG (0 / 255)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)):
        raise OSError(f"could not write {path}")
    return path


def write_overlay_png(path: str | Path, image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 64, 64), alpha: float = 0.45) -> Path:
    """Write an RGB image with the mask blended in `color` and its contour drawn."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = image.astype(np.float32)
    inside = np.asarray(mask, dtype=bool)
    rgb[inside] = (1 - alpha) * rgb[inside] + alpha * np.asarray(color, dtype=np.float32)
    out = np.ascontiguousarray(rgb.round().clip(0, 255).astype(np.uint8)[:, :, ::-1])
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color[::-1], thickness=1)
    if not cv2.imwrite(str(path), out):
        raise OSError(f"could not write {path}")
    return path
