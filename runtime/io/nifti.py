"""One slice of a NIfTI volume to the H x W x 3 uint8 RGB arrays the predictors take, and the way back.

Needs nibabel (`pip install sammed-edge[medical]`); it is imported only when a NIfTI file is read.

In-plane orientation: a slice keeps the volume's voxel axes, with no reorientation to RAS and no flips. Cutting
the volume at `index` along `axis` leaves two axes a < b; the 2D image is that plane transposed, so image rows run
along axis b and columns along axis a:

    image[row, col] = volume[col, row, index]      (axis=2)
    image[row, col] = volume[col, index, row]      (axis=1)
    image[row, col] = volume[index, col, row]      (axis=0)

This matches how `dicom_nifti_affine` lays a DICOM frame into a NIfTI (i = column, j = row), and `NiftiSlice.embed`
inverts it exactly, so label maps written by `write_nifti_labels` land on the voxels that were segmented. Depending
on the affine the image may look mirrored or upside down compared with a radiological viewer; the segmentation
models do not depend on it.

Intensities: an explicit window (or a preset from `WINDOW_PRESETS`), else the intensity policy of `common.py`
(0.5th..99.5th percentile of the slice's finite values by default), applied to the voxel values after the
header's scl_slope / scl_inter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..processing import MAX_IMAGE_SIDE
from .common import WINDOW_PRESETS, Window, check_intensity, import_optional, resolve_window, to_uint8

__all__ = ["NiftiSlice", "WINDOW_PRESETS", "read_nifti_slice"]


@dataclass(frozen=True, eq=False)
class NiftiSlice:
    """One 2D slice of a NIfTI volume and what is needed to write a label volume aligned with it.

    Attributes:
        image: H x W x 3 uint8 RGB, what the predictors take.
        values: H x W float32 voxel values of the slice (after scl_slope / scl_inter), in the same orientation.
        axis: the volume axis (0, 1 or 2) the slice is cut across.
        index: the slice's position along `axis`.
        volume: the 4th-dimension index that was read (0 for 3D data).
        volume_shape: the 3 spatial dimensions of the volume.
        affine: 4 x 4 float64 voxel-to-world (RAS mm) matrix of the volume.
        window: (center, width) that produced `image` (for the intensity policy, the equivalent window).
        path: the file read.
        header: a copy of the nibabel header (NIfTI-1 or NIfTI-2), to write labels with the same geometry.
    """

    image: np.ndarray
    values: np.ndarray
    axis: int
    index: int
    volume: int
    volume_shape: tuple[int, int, int]
    affine: np.ndarray
    window: tuple[float, float]
    path: Path
    header: Any = field(repr=False)

    @property
    def slicer(self) -> tuple[Any, ...]:
        """Index of this slice in a volume of `volume_shape` (three entries, one an integer)."""
        out: list[Any] = [slice(None)] * 3
        out[self.axis] = self.index
        return tuple(out)

    def embed(self, labels: np.ndarray, dtype: Any = np.uint8) -> np.ndarray:
        """Place an H x W map, in this slice's image orientation, into a zero volume of `volume_shape`.

        Args:
            labels: H x W array with H, W = image.shape[:2].
            dtype: dtype of the returned volume.

        Returns:
            X x Y x Z array of `dtype`, zero outside the slice.

        Raises:
            InputError: `labels` has the wrong shape.
        """
        labels = np.asarray(labels)
        if labels.shape != self.image.shape[:2]:
            raise InputError(f"label map of shape {labels.shape} does not match the slice's {self.image.shape[:2]}")
        volume = np.zeros(self.volume_shape, dtype=dtype)
        volume[self.slicer] = labels.T
        return volume


def read_nifti_slice(
    path: str | Path,
    index: int | None = None,
    axis: int = 2,
    window: Window = None,
    volume: int = 0,
    intensity: str = "percentile",
) -> NiftiSlice:
    """Read one slice of a 3D or 4D NIfTI-1/NIfTI-2 file (.nii, .nii.gz, or a .hdr/.img pair).

    Only the slice is read from disk (for uncompressed files); see the module docstring for the orientation.

    Args:
        path: the NIfTI file.
        index: slice position along `axis`; default the middle slice (size // 2).
        axis: 0, 1 or 2, the voxel axis the slice is cut across (2 is axial for the usual RAS/LAS volumes).
        window: None, a preset name from `WINDOW_PRESETS`, or (center, width) in the file's value units.
        volume: which volume of a 4D file (0-based).
        intensity: range used without a window: "percentile" (default) or "minmax".

    Returns:
        A `NiftiSlice` whose `image` is H x W x 3 uint8 RGB, H and W the sizes of the two remaining axes (the
        higher-numbered one first).

    Raises:
        InputError: missing, corrupt or truncated file; unsupported dimensions or data type; axis not 0/1/2;
            index or volume out of range (the message gives the valid range); bad window.
        ImportError: nibabel is not installed.
    """
    nib = import_optional("nibabel", "medical")
    resolved = resolve_window(window)
    check_intensity(intensity)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    for label, value in (("index", index), ("volume", volume)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise InputError(f"{label} must be an integer, got {value!r}")
    axis = int(axis)
    path = Path(path)
    if not path.exists():
        raise InputError(f"NIfTI file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    # nibabel raises many exception types on malformed headers and short or corrupt (gzip) data; any of them
    # means the file cannot be used, so they are reported as input errors with the cause attached.
    try:
        image = nib.load(path)
    except Exception as exc:
        raise InputError(f"{path} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, nib.Nifti1Pair):
        raise InputError(f"{path} is not NIfTI (nibabel reads it as {type(image).__name__})")
    try:
        return _read_slice(image, path, index, axis, resolved, int(volume), intensity)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"{path}: cannot read the slice ({type(exc).__name__}: {exc}); the file is corrupt or truncated"
        ) from exc


def _read_slice(
    image: Any,
    path: Path,
    index: int | None,
    axis: int,
    window: tuple[float, float] | None,
    volume: int,
    intensity: str,
) -> NiftiSlice:
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 2:
        raise InputError(f"{path} has {len(shape)} dimension(s); a 2D, 3D or 4D image is needed")
    if len(shape) > 4 and any(n != 1 for n in shape[4:]):
        raise InputError(f"{path} has shape {shape}; only 3D volumes and 4D series of volumes are supported")
    spatial = (shape + (1,))[:3]
    if min(spatial) <= 0:
        raise InputError(f"{path} has an empty volume (shape {shape})")
    volumes = shape[3] if len(shape) > 3 else 1
    if not 0 <= volume < volumes:
        raise InputError(f"volume {volume} is out of range: {path} has {volumes} volume(s) (valid 0..{volumes - 1})")
    size = spatial[axis]
    index = size // 2 if index is None else int(index)
    if not 0 <= index < size:
        raise InputError(f"index {index} is out of range for axis {axis} of {path} (size {size}; valid 0..{size - 1})")
    plane_shape = tuple(n for i, n in enumerate(spatial) if i != axis)
    if max(plane_shape) > MAX_IMAGE_SIDE:
        raise InputError(f"{path}: slice of {plane_shape} exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    kind = np.dtype(image.get_data_dtype()).kind
    if kind not in "biuf":
        raise InputError(f"{path} stores {image.get_data_dtype()} voxels; only real-valued scalar images are supported")

    if len(shape) == 2:
        data = np.asarray(image.dataobj)[:, :, None]
        plane = data[tuple(index if i == axis else slice(None) for i in range(3))]
    else:
        slicer: list[Any] = [index if i == axis else slice(None) for i in range(3)]
        slicer += [volume] * (len(shape) > 3) + [0] * max(len(shape) - 4, 0)
        plane = np.asarray(image.dataobj[tuple(slicer)])
    if plane.shape != plane_shape:
        raise InputError(f"{path}: read a slice of shape {plane.shape}, expected {plane_shape}")
    values = np.ascontiguousarray(plane.T, dtype=np.float32)
    gray, used = to_uint8(values, window, intensity)
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"{path} has no usable affine")
    return NiftiSlice(
        image=np.repeat(gray[:, :, None], 3, axis=2),
        values=values,
        axis=axis,
        index=index,
        volume=volume,
        volume_shape=spatial,
        affine=affine.copy(),
        window=used,
        path=path,
        header=image.header.copy(),
    )
