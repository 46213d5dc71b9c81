"""Writing masks and label maps: PNG, NIfTI aligned with the input, and DICOM-SEG.

Every writer validates its array first and raises `InputError` (a ValueError) for a wrong shape, dtype or value
range; a file system failure is an `OSError`. PNG content is written whatever the file name's extension.

NIfTI outputs overlay their input in any viewer: for a NIfTI input the label volume has the input's shape, affine
and sform/qform codes with the slice placed where it was read (see `nifti.py` for the in-plane orientation); for a
DICOM input a one-slice NIfTI is written whose affine comes from ImagePositionPatient, ImageOrientationPatient
and PixelSpacing, converted from DICOM's LPS to NIfTI's RAS (`dicom.dicom_nifti_affine`).

DICOM-SEG needs highdicom (`pip install sammed-edge[dicomseg]`), imported only by `write_dicom_seg`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError
from ..processing import MAX_IMAGE_SIDE, as_rgb_uint8
from .common import import_optional
from .dicom import DicomImage, dicom_nifti_affine
from .nifti import NiftiSlice

__all__ = ["write_dicom_seg", "write_label_png", "write_mask_png", "write_nifti_labels", "write_overlay_png"]

SOFTWARE_NAME = "SAM-Med2D Edge"


# ------------------------------------------------------------------------------------------- validation


def _plane(array: Any, name: str) -> np.ndarray:
    """An H x W (or H x W x 1) real or boolean array as H x W."""
    try:
        data = np.asarray(array)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be an array, got {type(array).__name__}") from exc
    if data.dtype.kind not in "biuf":
        raise InputError(f"{name} must hold numbers or booleans, got dtype {data.dtype}")
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise InputError(f"{name} must be H x W, got shape {data.shape}")
    if data.size == 0:
        raise InputError(f"{name} is empty (shape {data.shape})")
    if max(data.shape) > MAX_IMAGE_SIDE:
        raise InputError(f"{name} of {data.shape[0]} x {data.shape[1]} exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    return data


def _binary(array: Any, name: str = "mask") -> np.ndarray:
    data = _plane(array, name)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise InputError(f"{name} contains NaN or infinite values")
    return data != 0


def _labels(array: Any, name: str = "labels", limit: int = 65535) -> np.ndarray:
    """An integer label map (bool, integers, or integral floats) in 0..limit, as uint8 or uint16."""
    data = _plane(array, name)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise InputError(f"{name} must hold whole numbers (label ids), got non-integral float values")
    low, high = data.min(), data.max()
    if low < 0 or high > limit:
        raise InputError(f"{name} must hold label ids in 0..{limit}, got values in {low}..{high}")
    return data.astype(np.uint8 if high <= 255 else np.uint16)


def _write_png(path: str | Path, array: np.ndarray) -> Path:
    path = Path(path)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded.tobytes())
    return path


# ------------------------------------------------------------------------------------------- PNG


def write_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a binary mask as an 8-bit grayscale PNG (0 background, 255 foreground).

    Args:
        path: output file (PNG content whatever the extension); parent folders are created.
        mask: H x W (or H x W x 1) bool or numeric array; nonzero is foreground.

    Returns:
        The path written.

    Raises:
        InputError: not a 2D numeric array, empty, or NaN/inf values.
        OSError: the file cannot be written.
    """
    return _write_png(path, np.where(_binary(mask), 255, 0).astype(np.uint8))


def write_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """Write an integer label map as a grayscale PNG: 8-bit when every label is <= 255, else 16-bit.

    Args:
        path: output file (PNG content whatever the extension); parent folders are created.
        labels: H x W (or H x W x 1) bool, integer or whole-number float array with values 0..65535.

    Returns:
        The path written.

    Raises:
        InputError: wrong shape, negative / fractional / too large labels.
        OSError: the file cannot be written.
    """
    return _write_png(path, _labels(labels))


def write_overlay_png(
    path: str | Path,
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 64, 64),
    alpha: float = 0.45,
) -> Path:
    """Write an RGB image with the mask blended in `color` and its outer contour drawn.

    Args:
        path: output file (PNG content whatever the extension); parent folders are created.
        image: H x W x 3 (or H x W) uint8 RGB image.
        mask: H x W mask; nonzero is foreground.
        color: RGB colour of the blend and the contour.
        alpha: blend weight of `color` inside the mask, 0..1.

    Returns:
        The path written.

    Raises:
        InputError: bad image, a mask of another size, or alpha outside 0..1.
        OSError: the file cannot be written.
    """
    rgb = as_rgb_uint8(image)
    inside = _binary(mask)
    if inside.shape != rgb.shape[:2]:
        raise InputError(f"mask of shape {inside.shape} does not match the image's {rgb.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"alpha must be in 0..1, got {alpha}")
    blended = rgb.astype(np.float32)
    blended[inside] = (1 - alpha) * blended[inside] + alpha * np.asarray(color, dtype=np.float32)
    out = np.ascontiguousarray(blended.round().clip(0, 255).astype(np.uint8)[:, :, ::-1])
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color[::-1]), thickness=1)
    return _write_png(path, out)


# ------------------------------------------------------------------------------------------- NIfTI


def write_nifti_labels(path: str | Path, labels_2d: np.ndarray, reference: NiftiSlice | DicomImage) -> Path:
    """Write a label map as a NIfTI file that overlays the image it was computed on.

    For a `NiftiSlice` reference the output is a label volume of the reference's spatial shape, zero except on
    the slice (axis, index) the reference was read from, with the reference's affine, sform/qform and units.
    For a `DicomImage` reference it is a W x H x 1 volume with the affine of `dicom_nifti_affine` (LPS -> RAS).
    Voxels are uint8 when every label is <= 255, else uint16; the header's intent is "label".

    Args:
        path: output file, `.nii` or `.nii.gz` (compressed when the name ends in .gz).
        labels_2d: H x W label map (bool or integer ids 0..65535) in the reference image's orientation.
        reference: the `NiftiSlice` or `DicomImage` the labels were computed on.

    Returns:
        The path written.

    Raises:
        InputError: bad labels, a shape that does not match the reference, or a DICOM reference without
            patient geometry.
        ImportError: nibabel is not installed.
        OSError: the file cannot be written.
    """
    labels = _labels(labels_2d, "labels_2d")
    if isinstance(reference, NiftiSlice):
        return save_nifti_labels(path, reference.embed(labels, labels.dtype), header=reference.header)
    if isinstance(reference, DicomImage):
        if labels.shape != reference.image.shape[:2]:
            raise InputError(
                f"labels_2d of shape {labels.shape} does not match the image's {reference.image.shape[:2]}"
            )
        return save_nifti_labels(path, labels.T[:, :, None], affine=dicom_nifti_affine(reference))
    raise InputError(f"reference must be a NiftiSlice or DicomImage, got {type(reference).__name__}")


def save_nifti_labels(path: str | Path, voxels: np.ndarray, header: Any = None, affine: np.ndarray | None = None) -> Path:
    """Write an X x Y x Z uint8 / uint16 label array as NIfTI with intent "label".

    Args:
        voxels: the labels in the voxel grid of `header` or `affine`.
        header: a nibabel header to copy (its sform / qform and their codes are kept bit for bit), or None.
        affine: without a header, the RAS affine (sform and qform code 1, units mm).
    """
    nib = import_optional("nibabel", "medical")
    voxels = np.ascontiguousarray(voxels)
    if header is not None:
        header = header.copy()
        header.set_data_dtype(voxels.dtype)
        header.set_slope_inter(1.0, 0.0)
        image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        # affine=None keeps the header's own sform and qform (and their codes) bit for bit.
        image = image_class(voxels, None, header=header)
    else:
        image = nib.Nifti1Image(voxels, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        image.header.set_xyzt_units("mm")
        image.header.set_data_dtype(voxels.dtype)
    image.header.set_intent("label")
    image.header["cal_min"] = 0
    image.header["cal_max"] = float(voxels.max()) if voxels.size else 0.0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    return path


# ------------------------------------------------------------------------------------------- DICOM-SEG


def _segments(masks_or_labels: Any) -> np.ndarray:
    """H x W x K bool planes from an H x W mask / label map or a K x H x W stack of masks."""
    try:
        data = np.asarray(masks_or_labels)
    except (TypeError, ValueError) as exc:
        raise InputError(f"masks must be an array, got {type(masks_or_labels).__name__}") from exc
    if data.ndim == 3 and data.shape[0] >= 1:
        planes = [_binary(plane, f"masks[{i}]") for i, plane in enumerate(data)]
        return np.stack(planes, axis=-1)
    if data.dtype.kind in "bf":
        return _binary(data, "masks")[:, :, None]
    labels = _labels(data, "masks")
    if set(np.unique(labels).tolist()) <= {0, 255}:
        # An 8-bit 0/255 mask as `write_mask_png` writes it: one segment, not segment number 255.
        return (labels != 0)[:, :, None]
    count = int(labels.max())
    if count == 0:
        return np.zeros(labels.shape + (1,), dtype=bool)
    return labels[:, :, None] == np.arange(1, count + 1, dtype=labels.dtype)


def write_dicom_seg(
    path: str | Path,
    masks_or_labels: np.ndarray,
    reference: str | Path | DicomImage | Any,
    labels: Sequence[str] | None = None,
    *,
    series_description: str = "Segmentation",
    series_number: int = 100,
    algorithm_version: str = "0.1.0",
) -> Path:
    """Write a binary DICOM Segmentation (SEG) of a single-frame DICOM image.

    Each segment is SEMIAUTOMATIC (prompted by a user) with the algorithm recorded as SAM-Med2D Edge; the
    segmented property category and type are SNOMED-CT "Tissue". Empty segments are kept so that segment numbers
    are stable.

    Args:
        path: output file.
        masks_or_labels: H x W bool or float mask (nonzero = foreground, one segment); H x W integer label map
            (segment k = pixels equal to k, k = 1..max), except that a map holding only 0 and 255 is one 8-bit
            mask; or K x H x W stack of masks (K segments, may overlap). H x W must equal the source's
            Rows x Columns.
        reference: the source image as a file path, a pydicom Dataset or the `DicomImage` read from it.
        labels: one name per segment (default "Segment 1", ...).
        series_description: SeriesDescription of the new series.
        series_number: SeriesNumber of the new series.
        algorithm_version: version recorded in the algorithm identification.

    Returns:
        The path written.

    Raises:
        InputError: bad masks, a size that does not match the source, a multi-frame source, the wrong number
            of labels, or a source highdicom cannot derive a SEG from (the message says why).
        ImportError: highdicom is not installed.
        OSError: the file cannot be written.
    """
    hd = import_optional("highdicom", "dicomseg")
    pydicom = import_optional("pydicom", "dicomseg")
    source = _seg_source(pydicom, reference)
    planes = _segments(masks_or_labels)
    if int(source.get("NumberOfFrames") or 1) != 1:
        raise InputError(
            "write_dicom_seg supports single-frame source images; write a NIfTI or PNG for a frame of a "
            "multi-frame image"
        )
    rows, columns = int(source.get("Rows") or 0), int(source.get("Columns") or 0)
    if planes.shape[:2] != (rows, columns):
        raise InputError(f"masks of {planes.shape[0]} x {planes.shape[1]} do not match the source's {rows} x {columns}")
    count = planes.shape[2]
    names = [f"Segment {i}" for i in range(1, count + 1)] if labels is None else [str(name) for name in labels]
    if len(names) != count:
        raise InputError(f"{len(names)} label(s) given for {count} segment(s)")
    descriptions = segment_descriptions(names, algorithm_version)
    extra: dict[str, Any] = {}
    if "FrameOfReferenceUID" not in source:
        # Without patient geometry highdicom records a PixelSpacing of 1 but no SliceThickness, which it then
        # cannot read back; state both placeholders explicitly.
        extra["pixel_measures"] = hd.PixelMeasuresSequence(pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    seg = build_segmentation([source], planes[None], descriptions, series_description=series_description,
                             series_number=series_number, algorithm_version=algorithm_version, **extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def build_segmentation(sources: Sequence[Any], planes: np.ndarray, descriptions: Sequence[Any], *,
                       series_description: str, series_number: int, algorithm_version: str, **extra: Any) -> Any:
    """A binary highdicom Segmentation of `sources` from F x H x W x K bool planes (F frames in source order).

    Raises:
        InputError: highdicom cannot derive a SEG from the sources (the message says why).
    """
    hd = import_optional("highdicom", "dicomseg")
    # highdicom validates the sources against the SEG IOD and raises ValueError, TypeError or AttributeError
    # for what it cannot derive from; those are properties of the reference, reported as input errors.
    try:
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=np.asarray(planes).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=list(descriptions),
            series_instance_uid=hd.UID(),
            series_number=int(series_number),
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=algorithm_version,
            device_serial_number="0",
            series_description=series_description,
            omit_empty_frames=False,
            **extra,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"cannot derive a DICOM-SEG from this source image: {exc}") from exc


def segment_descriptions(names: Sequence[str], algorithm_version: str) -> list[Any]:
    """highdicom segment descriptions numbered 1..K: SEMIAUTOMATIC, SNOMED-CT "Tissue", algorithm SAM-Med2D Edge."""
    hd = import_optional("highdicom", "dicomseg")
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=SOFTWARE_NAME, family=codes.cid7162.ArtificialIntelligence, version=algorithm_version
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(name)[:64] or f"Segment {number}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, name in enumerate(names, start=1)
    ]


def _seg_source(pydicom: Any, reference: Any) -> Any:
    if isinstance(reference, DicomImage):
        if reference.dataset is None:
            raise InputError("the DicomImage carries no source dataset")
        return reference.dataset
    if isinstance(reference, pydicom.Dataset):
        return reference
    if isinstance(reference, (str, Path)):
        path = Path(reference)
        if not path.is_file():
            raise InputError(f"reference DICOM file {path} does not exist")
        # pydicom raises many exception types on malformed files; all mean the reference is unusable.
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise InputError(f"{path} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    raise InputError(
        f"reference must be a DICOM path, a pydicom Dataset or a DicomImage, got {type(reference).__name__}"
    )
