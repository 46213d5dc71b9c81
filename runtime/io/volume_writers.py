"""Label volumes written back aligned with the `Volume` they were computed on: NIfTI and DICOM-SEG.

NIfTI: the S x H x W labels go back to the volume's voxel grid (`Volume.to_voxels`); a NIfTI input's header is
copied (same shape, affine, sform / qform codes), a DICOM input gets the series' RAS affine. DICOM-SEG (highdicom):
one binary segment per label value present in `names` (or in the labels), referencing every source instance of
the series (one SEG frame per source slice, empty frames kept), or every frame of a multi-frame source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .images import import_optional
from .volumes import Volume
from .writers import build_segmentation, save_nifti_labels, segment_descriptions

__all__ = ["check_label_volume", "write_volume_dicom_seg", "write_volume_nifti"]


def check_label_volume(labels: Any, volume: Volume) -> np.ndarray:
    """An S x H x W label volume (bool or integer ids 0..65535) as uint8 / uint16, or InputError."""
    data = np.asarray(labels)
    if data.shape != volume.images.shape:
        raise InputError(f"label volume of shape {data.shape} does not match the volume's {volume.images.shape} (slices x H x W)")
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind not in "iu":
        raise InputError(f"label volume must hold integer label ids, got {data.dtype}")
    low, high = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if low < 0 or high > 65535:
        raise InputError(f"label volume must hold ids in 0..65535, got {low}..{high}")
    return data.astype(np.uint8 if high <= 255 else np.uint16)


def write_volume_nifti(path: str | Path, labels: np.ndarray, volume: Volume) -> Path:
    """Write an S x H x W label volume as NIfTI on the input's voxel grid (see the module docstring).

    Raises:
        InputError: a shape that does not match the volume, or bad label ids.
        ImportError: nibabel is not installed.
    """
    voxels = volume.to_voxels(check_label_volume(labels, volume))
    if volume.header is not None:
        return save_nifti_labels(path, voxels, header=volume.header)
    return save_nifti_labels(path, voxels, affine=volume.affine)


def write_volume_dicom_seg(path: str | Path, labels: np.ndarray, volume: Volume, names: Mapping[int, str] | None = None,
                           *, series_description: str = "Segmentation", series_number: int = 100,
                           algorithm_version: str = "0.1.0") -> Path:
    """Write an S x H x W label volume as a DICOM-SEG of the DICOM series (or multi-frame file) it was read from.

    Args:
        labels: S x H x W label ids; segment k (1..K) is the k-th label value of `names` (sorted), or of the
            nonzero values present when `names` is None.
        volume: a DICOM `Volume` (`read_dicom_series`, `read_dicom_multiframe`).
        names: label value -> segment label ("Label <value>" by default).

    Returns:
        The path written.

    Raises:
        InputError: not a DICOM volume, a shape mismatch, no segment, or a source highdicom rejects.
        ImportError: highdicom is not installed.
    """
    import_optional("highdicom", "dicomseg")
    if not volume.datasets:
        raise InputError("DICOM-SEG needs a DICOM input (a series folder or a multi-frame file); write NIfTI for NIfTI input")
    data = check_label_volume(labels, volume)
    values = sorted(int(v) for v in names) if names is not None else [int(v) for v in np.unique(data) if v != 0]
    if not values or any(v <= 0 for v in values):
        raise InputError("DICOM-SEG needs at least one label value >= 1 to write")
    planes = data[..., None] == np.asarray(values, dtype=data.dtype)
    if volume.frames:
        ordered = np.zeros_like(planes)
        ordered[list(volume.frames)] = planes
        planes = ordered
    text = [str((names or {}).get(v, f"Label {v}")) for v in values]
    seg = build_segmentation(list(volume.datasets), planes, segment_descriptions(text, algorithm_version),
                             series_description=series_description, series_number=series_number,
                             algorithm_version=algorithm_version)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path
