"""Property tests: on any input the readers and writers return a valid result or raise InputError, nothing else.

Inputs are random bytes, truncated and bit-flipped real DICOM / NIfTI / PNG files, and random arrays.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from nibabel.testing import data_path  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

from sammed_edge.runtime.errors import InputError  # noqa: E402
from sammed_edge.runtime.io import (  # noqa: E402
    DicomImage,
    NiftiSlice,
    read_dicom,
    read_image,
    read_mask,
    read_nifti_slice,
    write_label_png,
    write_mask_png,
    write_nifti_labels,
    write_overlay_png,
)

# Library warnings about malformed values are expected on corrupted files.
pytestmark = pytest.mark.filterwarnings("ignore")

FUZZ = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

CT_BYTES = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
MR_BYTES = Path(get_testdata_file("MR_small.dcm", download=False)).read_bytes()
RLE_BYTES = Path(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False)).read_bytes()
JPEG_BYTES = Path(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)).read_bytes()
NII_BYTES = (Path(data_path) / "anatomical.nii").read_bytes()
NII_GZ_BYTES = (Path(data_path) / "standard.nii.gz").read_bytes()
_ramp = (np.arange(64 * 48, dtype=np.uint16) * 20).reshape(64, 48)
PNG16_BYTES = cv2.imencode(".png", _ramp)[1].tobytes()
PNG8_BYTES = cv2.imencode(".png", (_ramp // 256).astype(np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _damage(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    """Truncate `data` to a fraction of its length, then flip bits at relative positions."""
    out = bytearray(data[: max(1, int(len(data) * cut))])
    for position, bit in flips:
        index = min(int(position * len(out)), len(out) - 1)
        out[index] ^= 1 << bit
    return bytes(out)


damage = st.tuples(
    st.one_of(st.just(1.0), st.floats(0.0, 1.0)),
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), max_size=6),
)
# Flips concentrated at the start, where the headers are (CT_small's first 16% is its header).
header_damage = st.tuples(
    st.just(1.0),
    st.lists(st.tuples(st.floats(0.0, 0.16), st.integers(0, 7)), min_size=1, max_size=4),
)


def _valid_rgb(image: np.ndarray) -> None:
    assert isinstance(image, np.ndarray) and image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0


def _read_or_input_error(call, check) -> None:
    try:
        result = call()
    except InputError:
        event("InputError")
        return
    event("read")
    check(result)


def _check_dicom(result: DicomImage) -> None:
    _valid_rgb(result.image)
    assert result.values.dtype == np.float32 and result.values.shape[:2] == result.image.shape[:2]


def _check_nifti(result: NiftiSlice) -> None:
    _valid_rgb(result.image)
    assert result.values.shape == result.image.shape[:2] and result.affine.shape == (4, 4)


# ------------------------------------------------------------------------------------------- readers


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".dcm", ".nii", ".nii.gz"]))
def test_random_bytes(scratch, data, suffix):
    path = scratch / f"random{suffix}"
    path.write_bytes(data)
    _read_or_input_error(lambda: read_image(path), _valid_rgb)
    _read_or_input_error(lambda: read_mask(path), lambda m: m.dtype == bool)
    _read_or_input_error(lambda: read_dicom(path), _check_dicom)
    _read_or_input_error(lambda: read_nifti_slice(path), _check_nifti)


@settings(FUZZ, max_examples=250)
@given(source=st.sampled_from([CT_BYTES, MR_BYTES, RLE_BYTES, JPEG_BYTES]), how=st.one_of(damage, header_damage), frame=st.integers(0, 2))
def test_damaged_dicom(scratch, source, how, frame):
    path = scratch / "damaged.dcm"
    path.write_bytes(_damage(source, *how))
    _read_or_input_error(lambda: read_dicom(path, frame=frame), _check_dicom)


@settings(FUZZ, max_examples=200)
@given(gz=st.booleans(), how=st.one_of(damage, header_damage), axis=st.integers(0, 2), index=st.none() | st.integers(-2, 40))
def test_damaged_nifti(scratch, gz, how, axis, index):
    if gz:
        # Damage both the compressed stream and the stream's content.
        path = scratch / "damaged.nii.gz"
        raw = gzip.decompress(NII_GZ_BYTES)
        path.write_bytes(gzip.compress(_damage(raw, *how)) if how[0] == 1.0 else _damage(NII_GZ_BYTES, *how))
    else:
        path = scratch / "damaged.nii"
        path.write_bytes(_damage(NII_BYTES, *how))
    _read_or_input_error(lambda: read_nifti_slice(path, index=index, axis=axis), _check_nifti)


@FUZZ
@given(source=st.sampled_from([PNG8_BYTES, PNG16_BYTES]), how=damage, intensity=st.sampled_from(["percentile", "minmax"]))
def test_damaged_png(scratch, source, how, intensity):
    path = scratch / "damaged.png"
    path.write_bytes(_damage(source, *how))
    _read_or_input_error(lambda: read_image(path, intensity=intensity), _valid_rgb)


# ------------------------------------------------------------------------------------------- writers


_dtypes = st.sampled_from([np.bool_, np.uint8, np.int16, np.uint16, np.int64, np.float32, np.float64, np.complex64])
arrays = hnp.arrays(dtype=_dtypes, shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9)) | hnp.arrays(
    dtype=_dtypes, shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)
)


def _written(path: Path) -> None:
    assert isinstance(path, Path) and path.is_file() and path.stat().st_size > 0


def _write_or_input_error(call) -> None:
    try:
        path = call()
    except InputError:
        event("InputError")
        return
    event("written")
    _written(path)


@settings(FUZZ, max_examples=150)
@given(array=arrays)
def test_png_writers(scratch, array):
    _write_or_input_error(lambda: write_mask_png(scratch / "m.png", array))
    _write_or_input_error(lambda: write_label_png(scratch / "l.png", array))
    image = np.zeros(array.shape[:2] + (3,), np.uint8) if array.ndim >= 2 else array
    _write_or_input_error(lambda: write_overlay_png(scratch / "o.png", image, array))


@pytest.fixture(scope="module")
def nifti_reference() -> NiftiSlice:
    return read_nifti_slice(Path(data_path) / "standard.nii.gz", axis=1)


@settings(FUZZ, max_examples=150)
@given(array=arrays | hnp.arrays(st.sampled_from([np.int64, np.float64]), (7, 4), elements=st.integers(0, 70000) | st.integers(0, 3)))
def test_nifti_writer(scratch, nifti_reference, array):
    def check():
        path = write_nifti_labels(scratch / "labels.nii.gz", array, nifti_reference)
        written = np.asanyarray(nib.load(path).dataobj)
        assert written.shape == nifti_reference.volume_shape
        np.testing.assert_array_equal(written[nifti_reference.slicer].T, np.asarray(array).reshape(written[nifti_reference.slicer].T.shape))
        return path

    _write_or_input_error(check)
