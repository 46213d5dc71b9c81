"""Uploaded files to the predictor's H x W x 3 uint8 input, refusing decompression bombs before decoding.

The bytes are sniffed (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), their pixel dimensions read from the header alone and
checked against `max_pixels`, then written to a private temporary file and read with the runtime's own reader
(`runtime.io.loading.load_for_segmentation`), so a served image is the image `sammed-edge segment` would read.
"""

from __future__ import annotations

import gzip
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io.loading import LoadedImage, load_for_segmentation

# The largest uncompressed NIfTI volume read for one slice (a .nii.gz is inflated to read any slice of it).
MAX_VOLUME_BYTES = 1 << 30

_NIFTI_DTYPE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8, 128: 3, 2304: 4}


class TooLarge(InputError):
    """An upload larger than the service's byte or pixel limits (HTTP 413)."""


@dataclass(frozen=True)
class Options:
    """How to read an upload: the CLI's `--window`, `--slice`, `--axis` and `--frame`."""

    window: str | None = None
    slice: int | None = None
    axis: int = 2
    frame: int = 0


def sniff(data: bytes, filename: str | None = None) -> str:
    """The format of an upload from its first bytes: png, jpeg, tiff, bmp, dicom, nifti or nifti-gz.

    DICOM's preamble comes first (a DICOM file's preamble may itself be a TIFF header); a DICOM dataset without
    the preamble is recognised by its file name (.dcm, .dicom, .ima) and left to the DICOM reader to vet.

    Raises:
        InputError: none of the supported formats.
    """
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data[:4] in (b"II+\x00", b"MM\x00+"):
        raise InputError("BigTIFF files are not supported: save the image as a classic TIFF or PNG")
    if data.startswith(b"BM"):
        return "bmp"
    if data[344:348] in (b"n+1\x00", b"n+2\x00") or data[4:8] in (b"n+2\x00",):
        return "nifti"
    if data.startswith(b"\x1f\x8b"):
        return "nifti-gz"
    if (filename or "").lower().endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    raise InputError("unsupported file: not PNG, JPEG, TIFF, BMP, DICOM (with its 'DICM' preamble) or NIfTI (.nii, .nii.gz)")


def raster_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, TIFF or BMP header, None when the header does not say."""
    try:
        if kind == "png":
            return struct.unpack(">II", data[16:24])
        if kind == "bmp":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "tiff":
            return _tiff_size(data)
    except struct.error:
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = data[offset + 2 + 12 * i : offset + 14 + 12 * i]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _nifti_header(data: bytes) -> tuple[tuple[int, ...], int] | None:
    """(dims, bytes per voxel) from a NIfTI-1 header (either byte order), None when not NIfTI-1."""
    for order in ("<", ">"):
        if len(data) >= 348 and struct.unpack(order + "i", data[:4])[0] == 348:
            ndim, *dims = struct.unpack(order + "8h", data[40:56])[:8]
            datatype = struct.unpack(order + "h", data[70:72])[0]
            return tuple(max(int(d), 1) for d in dims[: max(min(ndim, 7), 0)]), _NIFTI_DTYPE_BYTES.get(datatype, 8)
    return None


def check_dimensions(data: bytes, kind: str, max_pixels: int) -> None:
    """Refuse an image whose header says it has more than `max_pixels` pixels per plane.

    Raises:
        TooLarge: over the limit.
    """
    size = raster_size(data, kind)
    if size is None and kind in ("png", "jpeg", "tiff", "bmp"):
        raise InputError(f"cannot read the {kind.upper()} image's size from its header: the file is corrupt or truncated")
    if size is not None:
        width, height = size
        if width * height > max_pixels:
            raise TooLarge(f"image of {width} x {height} pixels exceeds the service's limit of {max_pixels} pixels")
        return
    if kind in ("nifti", "nifti-gz"):
        head = data[:352]
        if kind == "nifti-gz":
            try:
                head = gzip.GzipFile(fileobj=_Bytes(data)).read(352)
            except (OSError, EOFError):
                return  # not gzip after all: the reader names the problem
        header = _nifti_header(head)
        if header is None:
            return
        dims, itemsize = header
        spatial = (dims + (1, 1, 1))[:3]
        plane = max(spatial[i] * spatial[j] for i, j in ((0, 1), (0, 2), (1, 2)))
        total = itemsize
        for d in dims:
            total *= d
        if plane > max_pixels:
            raise TooLarge(f"NIfTI volume {dims} has slices of up to {plane} pixels; the limit is {max_pixels}")
        if total > MAX_VOLUME_BYTES:
            raise TooLarge(f"NIfTI volume {dims} holds {total / 2**20:.0f} MiB of voxels; the limit is {MAX_VOLUME_BYTES >> 20} MiB")
    if kind == "dicom":
        _check_dicom(data, max_pixels)


def _check_dicom(data: bytes, max_pixels: int) -> None:
    try:
        import pydicom

        ds = pydicom.dcmread(_Bytes(data), stop_before_pixels=True)
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:  # noqa: BLE001 - an unreadable header: the runtime's reader reports the real problem
        return
    if rows * columns > max_pixels:
        raise TooLarge(f"DICOM image of {columns} x {rows} pixels exceeds the service's limit of {max_pixels} pixels")


class _Bytes:
    """A minimal read-only file over bytes (io.BytesIO without the copy)."""

    def __init__(self, data: bytes) -> None:
        self._view, self._pos = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else min(self._pos + size, len(self._view))
        chunk = bytes(self._view[self._pos : end])
        self._pos = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, len(self._view))[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


_SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm", "nifti": ".nii", "nifti-gz": ".nii.gz"}


def _safe_name(filename: str | None, kind: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.[A-Za-z0-9]+)$", "", Path(filename or "upload").name)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "upload"
    return stem[:64] + _SUFFIX[kind]


def decode_upload(data: bytes, filename: str | None, options: Options, max_pixels: int) -> tuple[LoadedImage, str]:
    """Read an uploaded file as the runtime's `LoadedImage`.

    Args:
        data: the file's bytes.
        filename: the client's file name (only its stem is kept, for messages and output names).
        options: window / slice / axis / frame, as the CLI takes them.
        max_pixels: the largest image (pixels per plane) accepted.

    Returns:
        (loaded, name): the image and the name it was read under.

    Raises:
        InputError: empty, unsupported, corrupt or with options that do not apply (messages name the file).
        TooLarge: over `max_pixels`.
    """
    if not data:
        raise InputError("the uploaded file is empty (0 bytes)")
    kind = sniff(data, filename)
    check_dimensions(data, kind, max_pixels)
    name = _safe_name(filename, kind)
    with tempfile.TemporaryDirectory(prefix="sammed-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            loaded = _load(path, kind, options)
        except InputError as exc:
            raise InputError(str(exc).replace(str(path), name).replace(folder + "/", "")) from None
        except ImportError as exc:
            raise InputError(f"reading {kind} files needs an optional package the server lacks: {exc}") from None
    height, width = loaded.image.shape[:2]
    if height * width > max_pixels:
        raise TooLarge(f"image of {width} x {height} pixels exceeds the service's limit of {max_pixels} pixels")
    return _detached(loaded), name


def _load(path: Path, kind: str, options: Options) -> LoadedImage:
    if kind == "dicom":
        return load_for_segmentation(path, window=options.window, frame=options.frame)
    if kind.startswith("nifti"):
        return load_for_segmentation(path, window=options.window, index=options.slice, axis=options.axis)
    if options.window is not None:
        raise InputError("window applies to DICOM and NIfTI uploads only")
    return load_for_segmentation(path)


def _detached(loaded: LoadedImage) -> LoadedImage:
    """The loaded image with any lazy reference to the (deleted) temporary file dropped."""
    source: Any = loaded.source
    if source is not None and hasattr(source, "path"):
        try:
            import dataclasses

            source = dataclasses.replace(source, path=Path(source.path.name))
        except (TypeError, ValueError):
            pass
    return LoadedImage(loaded.image, loaded.kind, source)
