"""NIfTI slice reading (orientation, 4D, windowing, errors) and aligned label volumes."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
from nibabel.testing import data_path  # noqa: E402

from sammed_edge.runtime.errors import InputError  # noqa: E402
from sammed_edge.runtime.io import NiftiSlice, read_nifti_slice, write_nifti_labels  # noqa: E402

DATA = Path(data_path)
ANATOMICAL = DATA / "anatomical.nii"  # 33 x 41 x 25, big-endian int16, LAS
EXAMPLE_4D = DATA / "example4d.nii.gz"  # 128 x 96 x 24 x 2
STANDARD = DATA / "standard.nii.gz"  # 4 x 5 x 7 uint8
NIFTI2 = DATA / "example_nifti2.nii.gz"  # NIfTI-2, 32 x 20 x 12 x 2


def _volume(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj).astype(np.float32)


def _take(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(volume, index, axis=axis)


# ------------------------------------------------------------------------------------------- reading


def test_default_is_middle_axial_slice():
    result = read_nifti_slice(ANATOMICAL)
    assert isinstance(result, NiftiSlice)
    assert (result.axis, result.index, result.volume) == (2, 12, 0)
    assert result.volume_shape == (33, 41, 25)
    assert result.image.shape == (41, 33, 3) and result.image.dtype == np.uint8
    assert result.values.shape == (41, 33) and result.values.dtype == np.float32
    np.testing.assert_array_equal(result.affine, nib.load(ANATOMICAL).affine)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_orientation_is_the_documented_transpose(axis):
    volume = _volume(ANATOMICAL)
    index = volume.shape[axis] // 3
    result = read_nifti_slice(ANATOMICAL, index=index, axis=axis)
    np.testing.assert_array_equal(result.values, _take(volume, axis, index).T)
    # spot check of the formula in the module docstring, axis 2: image[row, col] = volume[col, row, index]
    if axis == 2:
        assert result.values[7, 3] == volume[3, 7, index]


def test_4d_volume_selection():
    volume = _volume(EXAMPLE_4D)
    first = read_nifti_slice(EXAMPLE_4D, index=10)
    second = read_nifti_slice(EXAMPLE_4D, index=10, volume=1)
    np.testing.assert_array_equal(first.values, volume[:, :, 10, 0].T)
    np.testing.assert_array_equal(second.values, volume[:, :, 10, 1].T)
    assert second.volume == 1 and second.volume_shape == (128, 96, 24)
    with pytest.raises(InputError, match=r"volume 2 is out of range.*valid 0\.\.1"):
        read_nifti_slice(EXAMPLE_4D, volume=2)


def test_scaling_is_applied(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(2.0, 10.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    result = read_nifti_slice(path, index=1, axis=1)
    np.testing.assert_allclose(result.values, (data[:, 1, :] * 2.0 + 10.0).T)


def test_explicit_window_and_preset(tmp_path):
    data = np.array([-1000, -160, 0, 100, 240, 3000], dtype=np.int16).reshape(6, 1, 1)
    path = tmp_path / "hu.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    result = read_nifti_slice(path, index=0, axis=2, window="abdomen")
    assert result.image[0, :, 0].tolist() == [0, 0, 102, 166, 255, 255]
    assert result.window == (40.0, 400.0)
    explicit = read_nifti_slice(path, index=0, axis=2, window=(40, 400))
    np.testing.assert_array_equal(explicit.image, result.image)


def test_percentile_policy(tmp_path):
    data = (np.arange(1000, dtype=np.float32) + 1000).reshape(20, 50, 1)
    data[0, 0, 0] = 1e6
    path = tmp_path / "ramp.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    result = read_nifti_slice(path, index=0)
    low, high = np.percentile(data[:, :, 0], [0.5, 99.5])
    expected = np.clip(np.rint((data[:, :, 0].T.astype(np.float64) - low) / (high - low) * 255), 0, 255)
    np.testing.assert_array_equal(result.image[:, :, 0], expected)
    assert read_nifti_slice(path, index=0, intensity="minmax").image.max() == 255


def test_2d_image(tmp_path):
    data = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    result = read_nifti_slice(path)
    assert result.index == 0 and result.volume_shape == (3, 4, 1)
    np.testing.assert_array_equal(result.values, data.T)


# ------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("axis", [3, -1, 2.0, "2", True])
def test_bad_axis(axis):
    with pytest.raises(InputError, match="axis must be 0, 1 or 2"):
        read_nifti_slice(ANATOMICAL, axis=axis)


def test_index_out_of_range():
    with pytest.raises(InputError, match=r"index 25 is out of range for axis 2.*valid 0\.\.24"):
        read_nifti_slice(ANATOMICAL, index=25)
    with pytest.raises(InputError, match=r"valid 0\.\.32"):
        read_nifti_slice(ANATOMICAL, index=-1, axis=0)


def test_truncated_nii(tmp_path):
    data = ANATOMICAL.read_bytes()
    for fraction in (0.001, 0.5, 0.9):
        path = tmp_path / "cut.nii"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(InputError):
            read_nifti_slice(path, index=24)


def test_truncated_and_corrupt_gz(tmp_path):
    data = EXAMPLE_4D.read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError):
        read_nifti_slice(path, index=20)
    path.write_bytes(data[:100] + bytes(len(data) - 100))
    with pytest.raises(InputError):
        read_nifti_slice(path)
    path.write_bytes(gzip.compress(b"not a nifti header" * 30))
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_nifti_slice(path)


def test_missing_and_empty(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_nifti_slice(tmp_path / "nope.nii")
    (tmp_path / "empty.nii").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_nifti_slice(tmp_path / "empty.nii")


# ------------------------------------------------------------------------------------------- label volumes


def _labels_for(result: NiftiSlice) -> np.ndarray:
    height, width = result.image.shape[:2]
    labels = np.zeros((height, width), np.uint8)
    labels[1 : height // 2, 2 : width // 2] = 1
    labels[height - 1, width - 1] = 2
    labels[0, 1] = 3  # one asymmetric pixel catches a transposed write
    return labels


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("source", [ANATOMICAL, EXAMPLE_4D, NIFTI2])
def test_label_volume_roundtrip(tmp_path, source, axis):
    reference = read_nifti_slice(source, axis=axis, index=3, volume=1 if source != ANATOMICAL else 0)
    labels = _labels_for(reference)
    path = write_nifti_labels(tmp_path / "labels.nii.gz", labels, reference)
    written = nib.load(path)
    original = nib.load(source)
    assert type(written) is type(original)
    assert written.shape == original.shape[:3]
    np.testing.assert_array_equal(written.affine, original.affine)
    for form in ("get_sform", "get_qform"):
        ours, theirs = getattr(written.header, form)(coded=True), getattr(original.header, form)(coded=True)
        assert ours[1] == theirs[1]
        np.testing.assert_array_equal(ours[0], theirs[0])
    data = np.asanyarray(written.dataobj)
    assert data.dtype == np.uint8 and written.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(_take(data, axis, 3), labels.T)
    assert data.sum() == labels.sum()  # nothing outside the slice
    # The asymmetric pixel (row 0, column 1) lands on the voxel the docstring formula names.
    voxel = [1, 0]
    voxel.insert(axis, 3)
    assert data[tuple(voxel)] == 3
    # Reading the written volume at the same place gives the labels back in image orientation.
    np.testing.assert_array_equal(read_nifti_slice(path, axis=axis, index=3).values, labels)


def test_label_volume_of_scaled_reference(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(data, np.diag([2.0, 3.0, 4.0, 1.0]))
    image.header.set_slope_inter(2.0, 10.0)
    nib.save(image, tmp_path / "scaled.nii")
    reference = read_nifti_slice(tmp_path / "scaled.nii", index=2)
    labels = np.zeros(reference.image.shape[:2], np.int64)
    labels[1, 2] = 300  # needs uint16
    written = nib.load(write_nifti_labels(tmp_path / "out.nii", labels, reference))
    values = np.asanyarray(written.dataobj)
    assert written.get_data_dtype() == np.uint16 and values.dtype == np.uint16
    assert values[2, 1, 2] == 300 and values.sum() == 300


def test_label_volume_errors(tmp_path):
    reference = read_nifti_slice(STANDARD)
    with pytest.raises(InputError, match="does not match"):
        write_nifti_labels(tmp_path / "x.nii", np.zeros((2, 2), np.uint8), reference)
    with pytest.raises(InputError):
        write_nifti_labels(tmp_path / "x.nii", -np.ones(reference.image.shape[:2]), reference)
    with pytest.raises(InputError, match="reference"):
        write_nifti_labels(tmp_path / "x.nii", np.zeros((2, 2), np.uint8), "not a reference")
