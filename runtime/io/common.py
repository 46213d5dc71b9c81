"""What every reader and writer of this package shares: the intensity policy and the optional imports.

The readers (`images`, `dicom`, `nifti`) and the writers import this module; it imports none of them. The
predictors see 8-bit RGB. Medical data often has more bits than that, so every reader in this package maps
intensities to 0..255 with the same rules, defined here:

Intensity policy:
    * 8-bit data passes through unchanged.
    * Anything else (16-bit PNG/TIFF, signed or float TIFF, DICOM after its modality LUT, NIfTI voxels) is mapped
      linearly from a range [low, high] to 0..255, clipped outside it and rounded to the nearest integer (ties to
      even). Without a window the range is, by default (`intensity="percentile"`), the 0.5th..99.5th percentile of
      the image's finite values, so a handful of outlier pixels (a metal implant, a hot detector pixel, padding
      at -2000 HU) cannot squeeze the anatomy into a few grey levels; `intensity="minmax"` uses the minimum and
      maximum instead. For colour images the range is taken over all channels together so hues are preserved.
    * A window (center, width) maps [center - width/2, center + width/2] to 0..255, i.e. DICOM's LINEAR_EXACT
      function: y = ((x - center) / width + 0.5) * 255. `WINDOW_PRESETS` names the usual CT windows.
    * A degenerate range (high <= low, e.g. a constant image) maps values above `low` to 255 and the rest to 0.
      NaN maps to 0.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from ..errors import InputError

# Percentiles of the default intensity range: robust to a few outlier pixels, close to the full range otherwise.
PERCENTILES = (0.5, 99.5)
INTENSITY_POLICIES = ("percentile", "minmax")

# Common CT windows as (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "abdomen": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}

# A window argument: a preset name, (center, width), or None for the intensity policy.
Window = str | tuple[float, float] | None


# ------------------------------------------------------------------------------------------- intensities


def check_intensity(intensity: str) -> str:
    """Validate an intensity policy name ("percentile" or "minmax") and return it.

    Raises:
        InputError: unknown name.
    """
    if intensity not in INTENSITY_POLICIES:
        raise InputError(f"intensity must be one of {INTENSITY_POLICIES}, got {intensity!r}")
    return intensity


def resolve_window(window: Window) -> tuple[float, float] | None:
    """Turn a window argument into (center, width), or None when no window was asked for.

    Args:
        window: None, a preset name from `WINDOW_PRESETS` (case-insensitive), or a (center, width) pair.

    Raises:
        InputError: unknown preset, not a pair of finite numbers, or width <= 0.
    """
    if window is None:
        return None
    if isinstance(window, str):
        key = window.strip().lower()
        if key not in WINDOW_PRESETS:
            raise InputError(f"unknown window preset {window!r}; known presets: {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[key]
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as exc:
        raise InputError(f"window must be a preset name or a (center, width) pair, got {window!r}") from exc
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
        raise InputError(f"window (center={center:g}, width={width:g}) needs finite values and a positive width")
    return center, width


def intensity_range(values: np.ndarray, intensity: str = "percentile") -> tuple[float, float]:
    """The (low, high) input range the intensity policy maps to 0..255.

    Args:
        values: array of any shape and real dtype; non-finite values are ignored.
        intensity: "percentile" (0.5th..99.5th percentile) or "minmax".

    Returns:
        (low, high) as floats; (0.0, 0.0) when no value is finite.
    """
    check_intensity(intensity)
    values = np.asarray(values)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.reshape(-1)
    if finite.size == 0:
        return 0.0, 0.0
    if intensity == "minmax":
        return float(finite.min()), float(finite.max())
    low, high = np.percentile(finite, PERCENTILES)
    return float(low), float(high)


def linear_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipped, rounded half to even); NaN becomes 0.

    Args:
        values: array of any shape and real dtype.
        low, high: the input values that become 0 and 255.

    Returns:
        uint8 array of the same shape.
    """
    data = np.asarray(values, dtype=np.float64)
    if not high > low:
        return np.where(data > low, 255, 0).astype(np.uint8)
    scaled = (data - low) * (255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Apply a (center, width) window (DICOM LINEAR_EXACT) and return uint8 of the same shape."""
    return linear_to_uint8(values, center - width / 2.0, center + width / 2.0)


def to_uint8(
    values: np.ndarray, window: Window = None, intensity: str = "percentile"
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map intensities to uint8 by an explicit window, else by the intensity policy.

    Args:
        values: real array of any shape (H x W, or H x W x C for colour).
        window: None, a preset name, or (center, width).
        intensity: policy used when `window` is None: "percentile" or "minmax".

    Returns:
        (image, window_used): the uint8 array of the same shape and the (center, width) that produced it.
    """
    resolved = resolve_window(window)
    if resolved is None:
        low, high = intensity_range(values, intensity)
        resolved = ((low + high) / 2.0, high - low)
        return linear_to_uint8(values, low, high), resolved
    return window_to_uint8(values, *resolved), resolved


def import_optional(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say which extra installs it.

    Raises:
        ImportError: the module is not installed; the message names `pip install sammed-edge[extra]`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{module} is required for this format but is not installed; install it with "
            f"`pip install sammed-edge[{extra}]`"
        ) from exc
