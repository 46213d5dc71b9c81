"""3D volumes: the `Volume` object (a stack of slices windowed once, with its geometry) and the NIfTI volume reader.

A volume is cut into slices across one voxel axis. Slice k of `Volume.values` / `Volume.images` is the 2D image
`read_nifti_slice(path, index=k, axis=axis)` would give (rows along the higher remaining voxel axis, columns along
the lower one; see `nifti.py`), so a DICOM series, a multi-frame DICOM and a NIfTI volume all give [S, H, W] arrays
in the same convention and label volumes go back onto the voxels they were computed on (`to_voxels`).

Intensities: one window for the whole volume. An explicit window (a preset name from `WINDOW_PRESETS` or
(center, width)) is applied to every slice; without one, the intensity policy of `images.py` (0.5th..99.5th
percentile by default) is computed over all voxels of the volume, not per slice, so a structure keeps its grey
level from slice to slice.

DICOM series and multi-frame DICOM are read by `series.py`; `loading.read_volume` dispatches on what the path is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..processing import MAX_IMAGE_SIDE
from .images import Window, check_intensity, import_optional, to_uint8

__all__ = ["Volume", "check_slice_index", "read_nifti_volume", "slice_order", "window_volume"]

# A volume this large (voxels) is almost certainly the wrong input; it would need gigabytes as float32.
MAX_VOXELS = 2**30


def slice_order(axis: int) -> tuple[int, int, int]:
    """Permutation of voxel axes (X, Y, Z) to the [slice, row, column] order of slices cut across `axis`."""
    low, high = (i for i in range(3) if i != axis)
    return axis, high, low


def check_slice_index(index: Any, count: int) -> int:
    """A slice index of a volume of `count` slices as int, or InputError naming the valid range."""
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise InputError(f"slice index must be an integer, got {index!r}")
    if not 0 <= int(index) < count:
        raise InputError(f"slice {index} is out of range: the volume has {count} slices (valid 0..{count - 1})")
    return int(index)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image as a stack of 2D slices, windowed once, with what is needed to write aligned results.

    Attributes:
        values: S x H x W float32 voxel values (after NIfTI scl_slope / DICOM modality LUT), slice k = slice k
            along `axis` in the `nifti.py` in-plane orientation.
        images: S x H x W uint8 after the volume's window (`window_volume`); what each slice shows the model.
        window: (center, width) that produced `images` (for the intensity policy, the equivalent window).
        axis: the voxel axis slices are cut across (always 2 for DICOM: the slice stacking axis).
        affine: 4 x 4 float64 voxel-to-world (RAS mm) matrix of the voxel grid (X, Y, Z).
        spacing: (slice, row, column) spacing in mm of the S x H x W arrays.
        kind: "nifti", "dicom-series" or "dicom-multiframe".
        modality: DICOM Modality ("" for NIfTI).
        path: the file or folder read.
        header: NIfTI: a copy of the nibabel header (labels keep its sform / qform); None for DICOM.
        datasets: DICOM series: one pixel-less pydicom Dataset per slice, in slice order; multi-frame: the one
            pixel-less Dataset. Empty for NIfTI.
        frames: multi-frame DICOM: the source frame index of each slice (slices are sorted by position); else ().
        series_instance_uid: the DICOM series read ("" for NIfTI).
    """

    values: np.ndarray
    images: np.ndarray
    window: tuple[float, float]
    axis: int
    affine: np.ndarray
    spacing: tuple[float, float, float]
    kind: str
    modality: str = ""
    path: Path | None = None
    header: Any = field(default=None, repr=False)
    datasets: tuple[Any, ...] = field(default=(), repr=False)
    frames: tuple[int, ...] = ()
    series_instance_uid: str = ""

    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def slice_size(self) -> tuple[int, int]:
        """(H, W) of every slice."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def voxel_shape(self) -> tuple[int, int, int]:
        """Shape (X, Y, Z) of the voxel grid that `affine` maps."""
        order = slice_order(self.axis)
        shape = [0, 0, 0]
        for position, voxel_axis in enumerate(order):
            shape[voxel_axis] = int(self.images.shape[position])
        return tuple(shape)  # type: ignore[return-value]

    def slice_image(self, index: int) -> np.ndarray:
        """Slice `index` as the H x W x 3 uint8 RGB image the predictors take.

        Raises:
            InputError: index out of range.
        """
        index = self.check_index(index)
        return np.repeat(self.images[index][:, :, None], 3, axis=2)

    def check_index(self, index: Any) -> int:
        """A slice index as int, or InputError naming the valid range."""
        return check_slice_index(index, self.num_slices)

    def to_voxels(self, stack: np.ndarray) -> np.ndarray:
        """An S x H x W array (a label volume, say) in the voxel grid (X, Y, Z) of `affine`.

        Raises:
            InputError: the stack's shape is not the volume's S x H x W.
        """
        stack = np.asarray(stack)
        if stack.shape != self.images.shape:
            raise InputError(f"label volume of shape {stack.shape} does not match the volume's {self.images.shape} (slices x H x W)")
        return np.ascontiguousarray(np.transpose(stack, np.argsort(slice_order(self.axis))))

    def from_voxels(self, voxels: np.ndarray) -> np.ndarray:
        """Inverse of `to_voxels`: an (X, Y, Z) array (a label file read with nibabel) as S x H x W."""
        voxels = np.asarray(voxels)
        if voxels.shape != self.voxel_shape:
            raise InputError(f"array of shape {voxels.shape} does not match the volume's voxel grid {self.voxel_shape}")
        return np.ascontiguousarray(np.transpose(voxels, slice_order(self.axis)))


def window_volume(values: np.ndarray, window: Window = None, intensity: str = "percentile") -> tuple[np.ndarray, tuple[float, float]]:
    """One window for a whole S x H x W volume: explicit, else the intensity policy over every voxel.

    Returns:
        (images, window_used): S x H x W uint8 and the (center, width) applied.
    """
    check_intensity(intensity)
    return to_uint8(values, window, intensity)


def check_volume_size(shape: tuple[int, ...], name: str) -> None:
    """InputError when an S x H x W shape is empty or too large."""
    if min(shape) <= 0:
        raise InputError(f"{name} has an empty volume (shape {shape})")
    if max(shape[1:]) > MAX_IMAGE_SIDE:
        raise InputError(f"{name}: slices of {shape[1]} x {shape[2]} exceed the {MAX_IMAGE_SIDE}-pixel side limit")
    if int(np.prod(shape, dtype=np.int64)) > MAX_VOXELS:
        raise InputError(f"{name}: a volume of {shape} voxels is larger than the {MAX_VOXELS} voxels supported")


def read_nifti_volume(path: str | Path, axis: int = 2, window: Window = None, volume: int = 0,
                      intensity: str = "percentile") -> Volume:
    """Read a 3D NIfTI volume (or one volume of a 4D file) as slices across `axis`, windowed once.

    Args:
        path: .nii, .nii.gz (or a .hdr/.img pair).
        axis: voxel axis the slices are cut across (2: axial for RAS/LAS volumes).
        window: None (the intensity policy over the whole volume), a preset name or (center, width).
        volume: which volume of a 4D file.
        intensity: "percentile" or "minmax", used without a window.

    Raises:
        InputError: missing or corrupt file, not 3D/4D, axis or volume out of range, a bad window.
        ImportError: nibabel is not installed.
    """
    nib = import_optional("nibabel", "medical")
    check_intensity(intensity)
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"NIfTI file {path} does not exist")
    try:
        image = nib.load(path)
    except Exception as exc:  # nibabel raises many types on malformed files; all mean the file is unusable
        raise InputError(f"{path} is not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(image, nib.Nifti1Pair):
        raise InputError(f"{path} is not NIfTI (nibabel reads it as {type(image).__name__})")
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3 or (len(shape) > 4 and any(n != 1 for n in shape[4:])):
        raise InputError(f"{path} has shape {shape}; a 3D volume (or a 4D series of volumes) is needed")
    volumes = shape[3] if len(shape) > 3 else 1
    if not 0 <= int(volume) < volumes:
        raise InputError(f"volume {volume} is out of range: {path} has {volumes} volume(s) (valid 0..{volumes - 1})")
    if np.dtype(image.get_data_dtype()).kind not in "biuf":
        raise InputError(f"{path} stores {image.get_data_dtype()} voxels; only real-valued scalar images are supported")
    order = slice_order(int(axis))
    check_volume_size(tuple(shape[i] for i in order), str(path))
    try:
        data = image.dataobj[(slice(None),) * 3 + (int(volume),) * (len(shape) > 3) + (0,) * max(len(shape) - 4, 0)]
        values = np.ascontiguousarray(np.transpose(np.asarray(data, dtype=np.float32), order))
    except Exception as exc:
        raise InputError(f"{path}: cannot read the voxels ({type(exc).__name__}: {exc}); the file is corrupt or truncated") from exc
    affine = np.asarray(image.affine, dtype=np.float64)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    images, used = window_volume(values, window, intensity)
    return Volume(
        values=values, images=images, window=used, axis=int(axis), affine=affine.copy(),
        spacing=tuple(float(zooms[i]) for i in order), kind="nifti", path=path, header=image.header.copy(),
    )
