"""DICOM images to the H x W x 3 uint8 RGB arrays the predictors take, keeping what is needed to write aligned results.

Needs pydicom (`pip install sammed-edge[medical]`); it is imported only when a DICOM file is read, so the rest of
the runtime works without it.

Grayscale pipeline (MONOCHROME1 / MONOCHROME2), applied to the selected frame:
    1. Modality LUT: Rescale Slope / Intercept or a Modality LUT Sequence (`pydicom.pixels.apply_modality_lut`);
       the result is `DicomImage.values`, e.g. Hounsfield units for CT.
    2. VOI, first that applies:
       a. an explicit `window=(center, width)` or a preset name from `WINDOW_PRESETS`, mapped with DICOM's
          LINEAR_EXACT function (see `common.py`);
       b. the file's own VOI LUT Sequence or Window Center / Width (the first value when there are several), with
          its VOI LUT Function (`pydicom.pixels.apply_voi_lut`), rescaled from its output range to 0..255; a
          file window pydicom cannot apply (e.g. a width below 1 for LINEAR) is skipped;
       c. the intensity policy of `common.py` (0.5th..99.5th percentile by default, or "minmax").
    3. MONOCHROME1 is inverted so that bright means dense, as on every other modality.
Enhanced multi-frame objects keep these attributes in functional groups; they are looked up for the selected frame
(per-frame, then shared groups, then the top-level dataset).

Colour images (RGB, YBR_FULL, YBR_FULL_422, JPEG 2000's YBR_RCT/YBR_ICT, PALETTE COLOR) are converted to RGB and
passed through; more than 8 bits per sample are scaled by the nominal range (2**BitsStored - 1). No window applies.

Compressed transfer syntaxes are decoded by pydicom's plugins; when none is installed for the file's syntax the
error names the packages to install (`DECODER_ADVICE`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..processing import MAX_IMAGE_SIDE
from .common import WINDOW_PRESETS, Window, check_intensity, import_optional, linear_to_uint8, resolve_window, to_uint8

__all__ = ["DECODER_ADVICE", "DicomImage", "WINDOW_PRESETS", "decoder_advice", "dicom_nifti_affine", "read_dicom"]

_GDCM = "GDCM (`pip install python-gdcm`)"
_JPEG = f"pylibjpeg and pylibjpeg-libjpeg (`pip install pylibjpeg pylibjpeg-libjpeg`) or {_GDCM}"
_JPEG_LS = (
    "pyjpegls (`pip install pyjpegls`), or pylibjpeg and pylibjpeg-libjpeg "
    f"(`pip install pylibjpeg pylibjpeg-libjpeg`), or {_GDCM}"
)
_JPEG_2000 = f"pylibjpeg and pylibjpeg-openjpeg (`pip install pylibjpeg pylibjpeg-openjpeg`) or {_GDCM}"
_HTJ2K = "pylibjpeg and pylibjpeg-openjpeg 2.0 or newer (`pip install pylibjpeg pylibjpeg-openjpeg`)"
_RLE = "pylibjpeg and pylibjpeg-rle (`pip install pylibjpeg pylibjpeg-rle`)"

# Transfer syntax UID -> the decoder packages that read it.
DECODER_ADVICE: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": _JPEG,  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": _JPEG,  # JPEG Extended (Process 2 and 4)
    "1.2.840.10008.1.2.4.57": _JPEG,  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": _JPEG,  # JPEG Lossless, First-Order Prediction (Process 14, SV1)
    "1.2.840.10008.1.2.4.80": _JPEG_LS,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": _JPEG_LS,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": _JPEG_2000,  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": _JPEG_2000,  # JPEG 2000
    "1.2.840.10008.1.2.4.92": _JPEG_2000,  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.93": _JPEG_2000,  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201": _HTJ2K,  # High-Throughput JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.202": _HTJ2K,  # High-Throughput JPEG 2000 with RPCL Lossless
    "1.2.840.10008.1.2.4.203": _HTJ2K,  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.5": _RLE,  # RLE Lossless
}
_CONVERT = (
    "no Python decoder for it is supported; convert the file to an uncompressed transfer syntax first "
    "(e.g. `gdcmconv --raw in.dcm out.dcm` or DCMTK's `dcmdjpeg` / `dcmconv +te`)"
)

_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # PixelData, FloatPixelData, DoubleFloatPixelData


@dataclass(frozen=True, eq=False)
class DicomImage:
    """One frame of a DICOM image, ready for a predictor, with the geometry to write aligned results.

    Attributes:
        image: H x W x 3 uint8 RGB, what the predictors take.
        values: H x W float32 after the modality LUT (Hounsfield units for CT); for colour images H x W x 3
            float32 RGB samples as stored (before any 8-bit scaling); for PALETTE COLOR the H x W stored indices.
        window: (center, width) that produced `image` from `values` (for the percentile policy the equivalent
            window); None for colour images and for a VOI LUT Sequence.
        voi: how the display range was chosen: "window", "preset:<name>", "file window", "file VOI LUT",
            "percentile", "minmax" or "colour".
        frame: the 0-based frame that was read.
        num_frames: frames in the file.
        photometric_interpretation: as stored in the file.
        modality: (0008,0060) Modality, "" when absent.
        pixel_spacing: (row spacing, column spacing) in mm from PixelSpacing, or None.
        slice_thickness: SliceThickness in mm, or None.
        image_position: ImagePositionPatient of the frame's first pixel (x, y, z) in mm, LPS, or None.
        image_orientation: ImageOrientationPatient, 6 direction cosines (row direction, then column direction),
            or None.
        study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid, frame_of_reference_uid: the
            source's identifiers ("" when absent).
        path: the file read, or None when a dataset was passed.
        dataset: the source pydicom Dataset without its pixel data (for writing DICOM-SEG).
    """

    image: np.ndarray
    values: np.ndarray
    window: tuple[float, float] | None
    voi: str
    frame: int
    num_frames: int
    photometric_interpretation: str
    modality: str
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    frame_of_reference_uid: str
    path: Path | None = None
    dataset: Any = field(default=None, repr=False)


def decoder_advice(transfer_syntax_uid: str) -> str:
    """What to install to decode pixel data of a transfer syntax (a sentence fragment naming packages)."""
    return DECODER_ADVICE.get(str(transfer_syntax_uid), _CONVERT)


def read_dicom(
    path: str | Path | Any,
    window: Window = None,
    frame: int = 0,
    intensity: str = "percentile",
) -> DicomImage:
    """Read one frame of a DICOM image.

    Args:
        path: a DICOM file (Part 10, or a bare dataset without the preamble), or a pydicom Dataset.
        window: None (the file's VOI, else `intensity`), a preset name from `WINDOW_PRESETS`, or a
            (center, width) pair in modality units (HU for CT). Ignored for colour images.
        frame: 0-based frame of a multi-frame image.
        intensity: range used when neither `window` nor the file gives one: "percentile" or "minmax".

    Returns:
        A `DicomImage` whose `image` is H x W x 3 uint8 RGB.

    Raises:
        InputError: missing file, not DICOM, corrupt or truncated, no pixel data, a compressed transfer syntax
            without an installed decoder (the message names what to install), frame out of range, bad window.
        ImportError: pydicom is not installed.
    """
    pydicom = import_optional("pydicom", "medical")
    resolved = resolve_window(window)
    check_intensity(intensity)
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise InputError(f"frame must be an integer, got {frame!r}")
    if isinstance(path, pydicom.Dataset):
        ds, source, name = path, None, "the DICOM dataset"
    else:
        source = Path(path)
        name = str(source)
        ds = _load(pydicom, source)
    # pydicom parses lazily and raises a wide range of exception types on malformed elements; anything that
    # escapes here is a property of the file, so it is reported as an input error with the cause attached.
    try:
        return _build(pydicom, ds, name, source, window, resolved, int(frame), intensity)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name} is not a usable DICOM image ({type(exc).__name__}: {exc})") from exc


def _load(pydicom: Any, path: Path) -> Any:
    if not path.exists():
        raise InputError(f"DICOM file {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        pass
    except Exception as exc:
        raise InputError(f"{path} is not a readable DICOM file ({type(exc).__name__}: {exc})") from exc
    # No preamble / 'DICM' prefix: older files are often bare datasets. Accept them only if they parse into
    # something that has image pixel attributes.
    try:
        ds = pydicom.dcmread(path, force=True)
        looks_like_image = any(tag in ds for tag in _PIXEL_TAGS) and "Rows" in ds and "Columns" in ds
    except Exception as exc:
        raise InputError(f"{path} is not a DICOM file ({type(exc).__name__}: {exc})") from exc
    if not looks_like_image:
        raise InputError(f"{path} is not a DICOM image: no DICOM header ('DICM' prefix) and no image pixel data")
    return ds


def _frame_attribute(ds: Any, frame: int, keyword: str) -> Any:
    """An attribute for one frame: from its per-frame functional groups, the shared groups, then the top level."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    for group in groups:
        for element in group:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0][keyword].value
    return ds[keyword].value if keyword in ds else None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """`count` finite floats from a DICOM value (single or multi-valued), or None when absent or malformed."""
    if value is None:
        return None
    items = [value] if isinstance(value, (str, bytes, int, float)) else value
    try:
        numbers = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def _transfer_syntax(pydicom: Any, ds: Any, name: str, own: bool) -> Any:
    """The dataset's transfer syntax; for a bare dataset read from a file, the one it was parsed with."""
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid:
        return pydicom.uid.UID(str(uid))
    guesses = {
        (True, True): pydicom.uid.ImplicitVRLittleEndian,
        (False, True): pydicom.uid.ExplicitVRLittleEndian,
        (False, False): pydicom.uid.ExplicitVRBigEndian,
    }
    encoding = tuple(getattr(ds, "original_encoding", (None, None)))
    encapsulated = "PixelData" in ds and ds["PixelData"].is_undefined_length
    if not own or encoding not in guesses or encapsulated:
        raise InputError(f"{name} has no Transfer Syntax UID (0002,0010), so its pixel data cannot be interpreted")
    if meta is None:
        ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = guesses[encoding]
    return guesses[encoding]


def _decoder(pydicom: Any, uid: Any, name: str) -> Any:
    from pydicom.pixels import get_decoder

    try:
        known = uid.is_transfer_syntax
    except ValueError:  # a private UID: pydicom cannot tell its type
        known = False
    if not known:
        raise InputError(
            f"{name} declares the unknown transfer syntax {str(uid)!r}: the file is corrupt, or uses a syntax "
            "pydicom does not know"
        )
    label = f"{uid.name} ({uid})"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise InputError(f"{name}: pixel data in transfer syntax {label} cannot be decoded: {_CONVERT}") from exc
    if not decoder.is_available:
        raise InputError(
            f"{name}: pixel data is compressed as {label} and no installed decoder reads it; "
            f"install {decoder_advice(uid)}"
        )
    return decoder


def _build(
    pydicom: Any,
    ds: Any,
    name: str,
    source: Path | None,
    window: Window,
    resolved: tuple[float, float] | None,
    frame: int,
    intensity: str,
) -> DicomImage:
    from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space

    if not any(tag in ds for tag in _PIXEL_TAGS):
        sop_class = ds.get("SOPClassUID")
        kind = f" ({getattr(sop_class, 'name', sop_class)})" if sop_class else ""
        raise InputError(
            f"{name} holds no pixel data{kind}: it is not an image object, or the file is truncated or corrupt"
        )
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if rows <= 0 or columns <= 0:
        raise InputError(f"{name} has no image size (Rows={rows}, Columns={columns}): corrupt or not an image")
    if max(rows, columns) > MAX_IMAGE_SIDE:
        raise InputError(f"{name}: image of {rows} x {columns} exceeds the {MAX_IMAGE_SIDE}-pixel side limit")
    num_frames = int(ds.get("NumberOfFrames") or 1)
    if num_frames < 1:
        raise InputError(f"{name} declares {num_frames} frames")
    if not 0 <= frame < num_frames:
        raise InputError(f"frame {frame} is out of range: {name} has {num_frames} frame(s) (valid 0..{num_frames - 1})")

    uid = _transfer_syntax(pydicom, ds, name, own=source is not None)
    decoder = _decoder(pydicom, uid, name)
    try:
        raw, meta = decoder.as_array(ds, index=frame, raw=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if uid.is_compressed:
            plugins = ", ".join(decoder.available_plugins)
            raise InputError(
                f"{name}: could not decode its {uid.name} pixel data with the installed decoder(s) ({plugins}): "
                f"{detail}. The file may be corrupt; otherwise try {decoder_advice(uid)}"
            ) from exc
        raise InputError(f"{name}: pixel data is unreadable ({detail}); the file is corrupt or truncated") from exc

    photometric = str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation") or "")
    samples = int(meta.get("samples_per_pixel") or 1)
    expected = (rows, columns, 3) if samples == 3 else (rows, columns)
    if samples not in (1, 3):
        raise InputError(f"{name}: {samples} samples per pixel is not supported (expected 1 or 3)")
    if raw.shape != expected:
        raise InputError(f"{name}: decoded frame has shape {raw.shape}, expected {expected}")

    used: tuple[float, float] | None = None
    voi = "colour"
    if samples == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            raw = convert_color_space(raw, photometric, "RGB")
        elif photometric not in ("RGB", "YBR_RCT", "YBR_ICT"):  # JPEG 2000 decoders return RGB for RCT / ICT
            raise InputError(f"{name}: unsupported colour photometric interpretation {photometric!r}")
        values = raw.astype(np.float32)
        bits = int(meta.get("bits_stored") or ds.get("BitsStored") or 8)
        image = raw if raw.dtype == np.uint8 else linear_to_uint8(raw, 0.0, float(2 ** max(bits, 1) - 1))
    elif photometric == "PALETTE COLOR":
        values = raw.astype(np.float32)
        rgb = apply_color_lut(raw, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        image = rgb.astype(np.uint8) if depth == 8 else linear_to_uint8(rgb, 0.0, float(2**depth - 1))
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        view = _pixel_view(pydicom, ds, frame)
        values = np.asarray(apply_modality_lut(raw, view), dtype=np.float32)
        gray, used, voi = _apply_voi(view, values, window, resolved, intensity)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        image = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        raise InputError(f"{name}: unsupported photometric interpretation {photometric!r}")

    def uid_of(keyword: str) -> str:
        return str(ds.get(keyword) or "")

    return DicomImage(
        image=np.ascontiguousarray(image),
        values=values,
        window=used,
        voi=voi,
        frame=frame,
        num_frames=num_frames,
        photometric_interpretation=str(ds.get("PhotometricInterpretation") or photometric),
        modality=str(ds.get("Modality") or ""),
        pixel_spacing=_floats(_frame_attribute(ds, frame, "PixelSpacing"), 2),
        slice_thickness=(_floats(_frame_attribute(ds, frame, "SliceThickness"), 1) or (None,))[0],
        image_position=_floats(_frame_attribute(ds, frame, "ImagePositionPatient"), 3),
        image_orientation=_floats(_frame_attribute(ds, frame, "ImageOrientationPatient"), 6),
        study_instance_uid=uid_of("StudyInstanceUID"),
        series_instance_uid=uid_of("SeriesInstanceUID"),
        sop_instance_uid=uid_of("SOPInstanceUID"),
        sop_class_uid=uid_of("SOPClassUID"),
        frame_of_reference_uid=uid_of("FrameOfReferenceUID"),
        path=source,
        dataset=_without_pixels(pydicom, ds),
    )


_VIEW_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence", "RescaleSlope",
    "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
)


def _pixel_view(pydicom: Any, ds: Any, frame: int) -> Any:
    """A small dataset with the frame's modality and VOI attributes where pydicom's LUT functions look for them."""
    view = pydicom.Dataset()
    for keyword in _VIEW_KEYWORDS:
        value = _frame_attribute(ds, frame, keyword)
        if value is not None and value != "":
            setattr(view, keyword, value)
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta
    return view


def _apply_voi(
    view: Any, values: np.ndarray, window: Window, resolved: tuple[float, float] | None, intensity: str
) -> tuple[np.ndarray, tuple[float, float] | None, str]:
    from pydicom.pixels import apply_voi, apply_voi_lut

    if resolved is not None:
        label = f"preset:{window.strip().lower()}" if isinstance(window, str) else "window"
        gray, used = to_uint8(values, resolved)
        return gray, used, label
    if view.get("VOILUTSequence"):
        item = view.VOILUTSequence[0]
        try:
            entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
            # The LUT's own output range, not its nominal bit depth: many 16-bit LUTs only reach 4095.
            outputs = apply_voi(np.arange(first, first + entries, dtype=np.int64), view)
            mapped = apply_voi(np.floor(values).astype(np.int64), view)
            low, high = float(np.min(outputs)), float(np.max(outputs))
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, NotImplementedError):
            mapped = None
        if mapped is not None:
            return linear_to_uint8(mapped, low, high), None, "file VOI LUT"
    if "WindowCenter" in view and "WindowWidth" in view:
        try:
            mapped = apply_voi_lut(values.astype(np.float64), view, index=0, prefer_lut=False)
            low, high = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), view, index=0, prefer_lut=False))
            center = _first_number(view.WindowCenter)
            width = _first_number(view.WindowWidth)
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            mapped = None
        if mapped is not None and np.isfinite(low) and np.isfinite(high):
            return linear_to_uint8(mapped, low, high), (center, width), "file window"
    gray, used = to_uint8(values, None, intensity)
    return gray, used, intensity


def _first_number(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, str)):
        value = value[0]
    return float(value)


def _without_pixels(pydicom: Any, ds: Any) -> Any:
    header = pydicom.Dataset()
    for element in ds:
        if element.tag not in _PIXEL_TAGS:
            header.add(element)
    if getattr(ds, "file_meta", None) is not None:
        header.file_meta = ds.file_meta
    header.preamble = getattr(ds, "preamble", None)
    header.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    return header


def dicom_nifti_affine(reference: DicomImage) -> np.ndarray:
    """The NIfTI (RAS+) affine of a DICOM frame, for writing a one-slice NIfTI that overlays it.

    Voxel axes: i runs along the DICOM columns (the image's x, the first ImageOrientationPatient triplet), j along
    the rows (the second triplet), k along their cross product; so the NIfTI array is `labels.T[:, :, None]` of
    an H x W label map, and `read_nifti_slice(..., axis=2, index=0)` gives the H x W map back. DICOM positions are
    LPS (x to the patient's left, y posterior); NIfTI's are RAS, so the first two rows of the LPS affine are
    negated. The slice step is SliceThickness (1 mm when absent).

    Args:
        reference: a `DicomImage` with image_position, image_orientation and pixel_spacing.

    Returns:
        4 x 4 float64 affine mapping (i, j, k, 1) to RAS millimetres.

    Raises:
        InputError: the reference lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing.
    """
    missing = [
        label
        for label, value in (
            ("ImagePositionPatient", reference.image_position),
            ("ImageOrientationPatient", reference.image_orientation),
            ("PixelSpacing", reference.pixel_spacing),
        )
        if value is None
    ]
    if missing:
        raise InputError(
            f"the DICOM reference has no {', '.join(missing)}, so its position in the patient is unknown; "
            "write the result as PNG or DICOM-SEG instead"
        )
    row_direction = np.asarray(reference.image_orientation[:3], dtype=np.float64)
    column_direction = np.asarray(reference.image_orientation[3:], dtype=np.float64)
    normal = np.cross(row_direction, column_direction)
    row_spacing, column_spacing = reference.pixel_spacing
    step = reference.slice_thickness if reference.slice_thickness and reference.slice_thickness > 0 else 1.0
    lps = np.eye(4)
    lps[:3, 0] = row_direction * column_spacing
    lps[:3, 1] = column_direction * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = reference.image_position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
