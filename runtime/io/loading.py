"""Open any supported image file or volume for segmentation, and write label maps aligned with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .dicom import DicomImage, read_dicom
from .images import read_image
from .images import Window
from .nifti import NiftiSlice, read_nifti_slice
from .series import read_dicom_multiframe, read_dicom_series
from .volumes import Volume, read_nifti_volume
from .writers import write_nifti_labels

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class LoadedImage:
    """An image ready for a predictor, and where it came from.

    Attributes:
        image: H x W x 3 uint8 RGB.
        kind: "raster", "dicom" or "nifti".
        source: the DICOM / NIfTI reader's result (geometry for aligned outputs), None for raster files.
    """

    image: np.ndarray
    kind: str
    source: DicomImage | NiftiSlice | None = None


def parse_window(window: str | None) -> str | tuple[float, float] | None:
    """A window from the command line: a preset name ("abdomen") or "CENTER,WIDTH"."""
    if window is None or "," not in window:
        return window
    try:
        center, width = (float(v) for v in window.split(","))
    except ValueError:
        raise InputError(f"window {window!r} must be a preset name or CENTER,WIDTH") from None
    return center, width


def file_kind(path: str | Path) -> str:
    """"dicom", "nifti" or "raster", from the file name (or the DICOM preamble for files without a suffix)."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(DICOM_SUFFIXES):
        return "dicom"
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                return "dicom"
    except OSError:
        pass
    return "raster"


def load_for_segmentation(path: str | Path, window: Any = None, frame: int = 0, index: int | None = None, axis: int = 2) -> LoadedImage:
    """Read a raster image, a DICOM frame or a NIfTI slice as the predictor's H x W x 3 uint8 input.

    Args:
        path: image file.
        window: DICOM / NIfTI intensity window: a preset name, "CENTER,WIDTH" or a (center, width) pair.
        frame: frame of a multi-frame DICOM.
        index, axis: NIfTI slice (default: the middle slice along axis 2).

    Raises:
        InputError: unreadable file, or options that do not apply.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    window = parse_window(window) if isinstance(window, str) else window
    kind = file_kind(path)
    if kind == "dicom":
        source: Any = read_dicom(path, window=window, frame=frame)
        return LoadedImage(source.image, kind, source)
    if kind == "nifti":
        source = read_nifti_slice(path, index=index, axis=axis, window=window)
        return LoadedImage(source.image, kind, source)
    if window is not None:
        raise InputError("--window applies to DICOM and NIfTI input only")
    return LoadedImage(read_image(path), kind)


def write_labels_like(path: str | Path, labels: np.ndarray, loaded: LoadedImage) -> Path:
    """Write an H x W label map as NIfTI aligned with the DICOM / NIfTI input it was segmented from."""
    if loaded.source is None:
        raise InputError("a NIfTI label map aligned with the input needs DICOM or NIfTI input; use the mask PNG for raster images")
    return write_nifti_labels(path, labels, loaded.source)


def read_volume(path: str | Path, window: Window = None, axis: int = 2, series_uid: str | None = None,
                intensity: str = "percentile") -> Volume:
    """Read a NIfTI volume, a folder holding a DICOM series, or a multi-frame DICOM file.

    Args:
        path: a .nii / .nii.gz file, a folder of DICOM files, or one multi-frame DICOM file.
        window: None (intensity policy over the volume), a preset name ("lung", ...) or (center, width).
        axis: NIfTI only: the voxel axis slices are cut across.
        series_uid: DICOM folders: the SeriesInstanceUID to read when the folder holds several series.
        intensity: "percentile" or "minmax", used without a window.

    Raises:
        InputError: naming the problem (see `read_nifti_volume`, `series.read_dicom_series`).
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, window=window, series_uid=series_uid, intensity=intensity)
    if not path.is_file():
        raise InputError(f"volume {path} does not exist (a NIfTI file, a DICOM series folder or a multi-frame DICOM)")
    kind = file_kind(path)
    if kind == "nifti":
        return read_nifti_volume(path, axis=axis, window=window, intensity=intensity)
    if kind == "dicom":
        return read_dicom_multiframe(path, window=window, intensity=intensity)
    raise InputError(f"{path} is not a volume: give a NIfTI file (.nii, .nii.gz), a DICOM series folder or a multi-frame DICOM")
