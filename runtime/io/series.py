"""DICOM volumes: a series given as a folder of single-frame files, and multi-frame DICOM, as a `Volume`.

Series: every DICOM file directly in the folder is read (other files are ignored); files are grouped by
SeriesInstanceUID and one series is read: the only one, or the one `series_uid` names (a folder mixing several
series without a uid is an error listing them). Slices are sorted by ImagePositionPatient projected on the slice
normal (the cross product of ImageOrientationPatient's row and column directions), never by file name or
InstanceNumber. All slices must share orientation, size and pixel spacing, sit at distinct positions, and be evenly
spaced: a gap more than `SPACING_TOLERANCE` off the median step means missing slices (the error says where).

Multi-frame: each frame's position comes from its per-frame functional groups; frames are sorted the same way
(`Volume.frames` keeps the source frame of each slice). Without per-frame positions the frames stay in file order.

Pixel values are the modality values of `dicom.read_dicom` (HU for CT); the volume is windowed once
(`volumes.window_volume`), MONOCHROME1 inverted. Voxel grid: i along the columns, j along the rows, k along the
sorted slices; `Volume.affine` maps it to RAS millimetres (DICOM's LPS with x and y negated), its third column the
measured step between slices.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .dicom import DicomImage, dicom_nifti_affine, read_dicom
from .images import Window, import_optional
from .volumes import Volume, check_volume_size, window_volume

__all__ = ["SPACING_TOLERANCE", "read_dicom_multiframe", "read_dicom_series", "sort_positions"]

# Largest relative deviation of one slice step from the median step before the series counts as uneven.
SPACING_TOLERANCE = 0.05
# Direction cosines of two slices that differ by more than this are different orientations.
ORIENTATION_TOLERANCE = 1e-4
# A window that keeps read_dicom from computing a per-slice percentile range we do not use.
_RAW_WINDOW = (0.0, 1.0)


def _headers(pydicom: Any, folder: Path) -> list[tuple[Path, Any]]:
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not a DICOM file (a README, a DICOMDIR's neighbours): not part of a series
            continue
        if "Rows" in ds and "Columns" in ds:
            found.append((path, ds))
    return found


def _describe(uid: str, members: list[tuple[Path, Any]]) -> str:
    ds = members[0][1]
    text = f"{uid} ({len(members)} file(s)"
    for keyword in ("Modality", "SeriesDescription", "SeriesNumber"):
        if ds.get(keyword) not in (None, ""):
            text += f", {keyword} {ds.get(keyword)}"
    return text + ")"


def sort_positions(positions: np.ndarray, orientation: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Order slices by their position along the slice normal and check that they are evenly spaced.

    Args:
        positions: N x 3 ImagePositionPatient (mm).
        orientation: 6 ImageOrientationPatient direction cosines.
        name: what to call the series in errors.

    Returns:
        (order, step): indices sorting the slices, and the mean step vector (3,) between consecutive sorted
        slices (the normal for a single slice).

    Raises:
        InputError: two slices at one position, or missing / unevenly spaced slices (the message names where).
    """
    normal = np.cross(orientation[:3], orientation[3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if len(order) == 1:
        return order, normal
    sorted_along = along[order]
    gaps = np.diff(sorted_along)
    if np.any(gaps < 1e-3):
        first = int(np.argmax(gaps < 1e-3))
        raise InputError(f"{name}: two slices share the position {sorted_along[first]:.3f} mm along the slice normal "
                         "(duplicate files, or several acquisitions in one series)")
    step = float(np.median(gaps))
    bad = np.abs(gaps - step) > SPACING_TOLERANCE * step
    if np.any(bad):
        first = int(np.argmax(bad))
        low, high = sorted_along[first], sorted_along[first + 1]
        missing = gaps[first] / step - 1.0
        what = f"about {missing:.0f} slice(s) missing" if missing >= 0.5 else "unevenly spaced slices"
        raise InputError(f"{name}: {what} between {low:.3f} and {high:.3f} mm along the slice normal (step "
                         f"{gaps[first]:.3f} mm, the series' usual step {step:.3f} mm); a volume needs evenly spaced slices")
    sorted_positions = positions[order]
    return order, (sorted_positions[-1] - sorted_positions[0]) / (len(order) - 1)


def _series_affine(first: DicomImage, step: np.ndarray) -> np.ndarray:
    """The RAS affine of a stack whose slice 0 is `first` and whose slices advance by `step` (LPS mm)."""
    affine = dicom_nifti_affine(first)
    affine[:3, 2] = np.diag([-1.0, -1.0, 1.0]) @ step
    return affine


def _stack(frames: list[DicomImage], name: str) -> np.ndarray:
    if frames[0].values.ndim != 2:
        raise InputError(f"{name}: colour DICOM images are not supported as volumes")
    return np.stack([frame.values for frame in frames]).astype(np.float32, copy=False)


def _window(values: np.ndarray, frames: list[DicomImage], window: Window, intensity: str) -> tuple[np.ndarray, tuple[float, float]]:
    images, used = window_volume(values, window, intensity)
    if frames[0].photometric_interpretation == "MONOCHROME1":
        images = 255 - images
    return images, used


def _volume(slices: list[DicomImage], step: np.ndarray, name: str, window: Window, intensity: str, **source: Any) -> Volume:
    """The `Volume` of `slices` (frames in slice order) whose slices advance by `step` (LPS mm), windowed once."""
    values = _stack(slices, name)
    check_volume_size(values.shape, name)
    images, used = _window(values, slices, window, intensity)
    row_spacing, column_spacing = slices[0].pixel_spacing
    return Volume(values=values, images=images, window=used, axis=2, affine=_series_affine(slices[0], step),
                  spacing=(float(np.linalg.norm(step)), float(row_spacing), float(column_spacing)),
                  modality=slices[0].modality, **source)


def _geometry(frames: list[DicomImage], name: str) -> tuple[np.ndarray, np.ndarray]:
    """N x 3 positions and the shared orientation of the frames, or InputError naming what is missing."""
    missing = [i for i, f in enumerate(frames) if f.image_position is None or f.image_orientation is None]
    if missing:
        raise InputError(f"{name}: slice {missing[0]} has no ImagePositionPatient / ImageOrientationPatient, so the slices "
                         "cannot be ordered in space")
    orientation = np.asarray(frames[0].image_orientation, dtype=np.float64)
    for i, frame in enumerate(frames):
        if np.max(np.abs(np.asarray(frame.image_orientation) - orientation)) > ORIENTATION_TOLERANCE:
            raise InputError(f"{name}: slice {i} has another ImageOrientationPatient than the first; a volume needs one orientation")
    sizes = {f.values.shape for f in frames}
    if len(sizes) > 1:
        raise InputError(f"{name}: slices of different sizes {sorted(sizes)}")
    spacings = {f.pixel_spacing for f in frames}
    if len(spacings) > 1:
        raise InputError(f"{name}: slices with different PixelSpacing {sorted(map(str, spacings))}")
    if frames[0].pixel_spacing is None:
        raise InputError(f"{name}: no PixelSpacing, so the voxel size is unknown")
    return np.asarray([f.image_position for f in frames], dtype=np.float64), orientation


def read_dicom_series(folder: str | Path, window: Window = None, series_uid: str | None = None,
                      intensity: str = "percentile") -> Volume:
    """Read a DICOM series from a folder of single-frame files as a `Volume` (see the module docstring).

    Args:
        folder: the folder holding the series' files (other files are ignored).
        window: None (intensity policy over the volume), a preset name or (center, width) in modality units.
        series_uid: which SeriesInstanceUID to read when the folder holds several.
        intensity: "percentile" or "minmax", used without a window.

    Raises:
        InputError: no DICOM image in the folder, several series without `series_uid`, an unknown uid, missing
            geometry, mixed orientations / sizes, duplicate positions, missing or unevenly spaced slices.
        ImportError: pydicom is not installed.
    """
    pydicom = import_optional("pydicom", "medical")
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM series folder {folder} does not exist")
    headers = _headers(pydicom, folder)
    if not headers:
        raise InputError(f"{folder} holds no DICOM image files")
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path, ds in headers:
        groups[str(ds.get("SeriesInstanceUID") or "")].append((path, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(f"{folder} holds no series {series_uid}; it holds: " + "; ".join(_describe(u, m) for u, m in groups.items()))
        uid = series_uid
    elif len(groups) > 1:
        raise InputError(f"{folder} mixes {len(groups)} DICOM series; choose one by its SeriesInstanceUID: "
                         + "; ".join(_describe(u, m) for u, m in groups.items()))
    else:
        uid = next(iter(groups))
    members = groups[uid]
    multi = [path for path, ds in members if int(ds.get("NumberOfFrames") or 1) > 1]
    if multi:
        if len(members) == 1:
            return read_dicom_multiframe(multi[0], window=window, intensity=intensity)
        raise InputError(f"{folder}: series {uid} mixes multi-frame files ({multi[0].name}) with other files; read the "
                         "multi-frame file on its own")
    name = f"series {uid} in {folder}"
    frames = [read_dicom(path, window=_RAW_WINDOW) for path, _ in members]
    positions, orientation = _geometry(frames, name)
    order, step = sort_positions(positions, orientation, name)
    frames = [frames[i] for i in order]
    return _volume(frames, step, name, window, intensity, kind="dicom-series", path=folder,
                   datasets=tuple(f.dataset for f in frames), series_instance_uid=uid)


def read_dicom_multiframe(path: str | Path, window: Window = None, intensity: str = "percentile") -> Volume:
    """Read every frame of a multi-frame DICOM file as a `Volume`, frames sorted by position when they have one.

    Without per-frame ImagePositionPatient the frames keep their file order, the slice step is
    SpacingBetweenSlices (else SliceThickness, else 1 mm) along the slice normal.

    Raises:
        InputError: unreadable file, a single frame, colour frames, frames of other orientations, missing or
            unevenly spaced frames.
        ImportError: pydicom is not installed.
    """
    pydicom = import_optional("pydicom", "medical")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"DICOM file {path} does not exist")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files
        raise InputError(f"{path} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    count = int(ds.get("NumberOfFrames") or 1)
    if count < 2:
        raise InputError(f"{path} holds a single frame; a volume needs a DICOM series folder or a multi-frame file")
    name = str(path)
    frames = [read_dicom(ds, window=_RAW_WINDOW, frame=f) for f in range(count)]
    if all(f.image_position is not None for f in frames):
        positions, orientation = _geometry(frames, name)
        order, step = sort_positions(positions, orientation, name)
    else:
        if frames[0].image_orientation is None or frames[0].pixel_spacing is None:
            raise InputError(f"{name}: frames without ImagePositionPatient / ImageOrientationPatient / PixelSpacing have no geometry")
        orientation = np.asarray(frames[0].image_orientation, dtype=np.float64)
        distance = ds.get("SpacingBetweenSlices") or frames[0].slice_thickness or 1.0
        order, step = np.arange(count), np.cross(orientation[:3], orientation[3:]) * float(distance)
        frames = [f if f.image_position is not None else _at_origin(f) for f in frames]
    frames = [frames[i] for i in order]
    return _volume(frames, step, name, window, intensity, kind="dicom-multiframe", path=path,
                   datasets=(frames[0].dataset,), frames=tuple(int(i) for i in order),
                   series_instance_uid=frames[0].series_instance_uid)


def _at_origin(frame: DicomImage) -> DicomImage:
    from dataclasses import replace

    return replace(frame, image_position=(0.0, 0.0, 0.0))
