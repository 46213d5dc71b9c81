"""2D raster images (PNG, JPEG, TIFF, BMP) to the H x W x 3 uint8 RGB arrays the predictors take.

Non-8-bit data is mapped to 0..255 by the intensity policy every reader in this package shares (`common.py`; its
names stay importable from here). Grayscale is replicated to 3 channels, an alpha channel is dropped, OpenCV's BGR
order is turned into RGB. Only the first page of a multi-page TIFF is read, and EXIF orientation is ignored (pixels
are returned as stored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError

# the shared intensity policy and optional imports, re-exported: readers and callers import them from here too
from .common import (  # noqa: F401
    INTENSITY_POLICIES,
    PERCENTILES,
    WINDOW_PRESETS,
    Window,
    check_intensity,
    import_optional,
    intensity_range,
    linear_to_uint8,
    resolve_window,
    to_uint8,
    window_to_uint8,
)

# ------------------------------------------------------------------------------------------- raster files


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    if not path.exists():
        raise InputError(f"{what} file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if data.size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:
        raise InputError(f"{path} is not a readable image (PNG, JPEG, TIFF or BMP): {exc}") from exc
    if image is None:
        raise InputError(
            f"{path} is not a readable image (PNG, JPEG, TIFF or BMP): corrupt, truncated or another format"
        )
    if image.size == 0:
        raise InputError(f"{path} holds an empty image (shape {image.shape})")
    return image


def read_image(path: str | Path, intensity: str = "percentile") -> np.ndarray:
    """Read a raster image as H x W x 3 uint8 RGB.

    8-bit images are returned as stored; 16-bit, signed or float images are mapped to 0..255 by the module's
    intensity policy. Grayscale is replicated to 3 channels and an alpha channel is dropped.

    Args:
        path: PNG, JPEG, TIFF or BMP file.
        intensity: range used for non-8-bit data: "percentile" (0.5th..99.5th, default) or "minmax".

    Returns:
        H x W x 3 uint8 RGB array.

    Raises:
        InputError: missing, empty, corrupt or unsupported file, or an unknown intensity policy.
    """
    check_intensity(intensity)
    path = Path(path)
    image = _decode(path, cv2.IMREAD_UNCHANGED, "image")
    if image.ndim == 3 and image.shape[2] in (2, 4):
        # Gray + alpha or BGR + alpha: the colour planes come first.
        image = image[:, :, : image.shape[2] - 1]
    if image.dtype != np.uint8:
        if image.dtype.kind not in "uif":
            raise InputError(f"{path} has unsupported pixel type {image.dtype}")
        image, _ = to_uint8(image, None, intensity)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{path} has an unsupported channel layout (shape {image.shape})")
    return np.ascontiguousarray(image[:, :, ::-1])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask image as H x W bool: a pixel is foreground when any colour channel is nonzero.

    Any bit depth is accepted (a 16-bit label image's label 1 is foreground); an alpha channel is ignored.

    Raises:
        InputError: missing, empty or unreadable file.
    """
    path = Path(path)
    mask = _decode(path, cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3 and mask.shape[2] in (2, 4):
        mask = mask[:, :, : mask.shape[2] - 1]
    if mask.ndim == 3:
        return np.any(mask != 0, axis=2)
    return mask != 0


def __getattr__(name: str) -> Any:
    # The PNG writers moved to writers.py; keep `from .images import write_mask_png` working.
    if name in ("write_mask_png", "write_overlay_png"):
        from . import writers

        return getattr(writers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
