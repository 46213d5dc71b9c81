"""Volume readers and writers on real pixel data: a medvol-dev CT volume written as a DICOM series (and as one
multi-frame file) with its geometry, read back in shuffled file order; missing slices and mixed series; label
volumes written back as NIfTI and DICOM-SEG landing on the voxels they came from."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io import (
    read_dicom_multiframe, read_dicom_series, read_nifti_volume, read_volume, write_volume_dicom_seg, write_volume_nifti,
)

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

CASE = "lidc_0066_nodule2"
SLICES = slice(20, 28)  # 8 slices through the nodule keep the files small


@pytest.fixture(scope="module")
def ct(medvol_dev):
    """(voxels X x Y x Z HU, affine, label voxels) of 8 slices of a real CT nodule crop."""
    image = nib.load(medvol_dev / "images" / f"{CASE}.nii.gz")
    labels = nib.load(medvol_dev / "labels" / f"{CASE}.nii.gz")
    voxels = np.asarray(image.dataobj)[:, :, SLICES].astype(np.int16)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [0, 0, SLICES.start] + image.affine[:3, 3]
    return voxels, affine, np.asarray(labels.dataobj)[:, :, SLICES].astype(np.uint8)


def _dataset(voxels, affine, k, series_uid, study_uid, frame_uid, number=1):
    """One CT slice k of X x Y x Z voxels as a DICOM dataset whose geometry reproduces `affine` (RAS)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    spacing_i, spacing_j = np.linalg.norm(lps[:, 0]), np.linalg.norm(lps[:, 1])
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    ds.PatientName, ds.PatientID, ds.Modality, ds.SeriesNumber = "Test^Volume", "VOL1", "CT", number
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20260101", "120000", "1", "", "1"
    ds.PatientBirthDate, ds.PatientSex, ds.Manufacturer = "", "O", "test"
    ds.InstanceNumber = voxels.shape[2] - k  # deliberately not the spatial order
    ds.ImagePositionPatient = [f"{v:.6f}" for v in lps @ [0, 0, k, 1]]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*lps[:, 0] / spacing_i, *lps[:, 1] / spacing_j)]
    ds.PixelSpacing = [f"{spacing_j:.6f}", f"{spacing_i:.6f}"]
    ds.SliceThickness = f"{np.linalg.norm(lps[:, 2]):.6f}"
    ds.Rows, ds.Columns = voxels.shape[1], voxels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.ascontiguousarray(voxels[:, :, k].T.astype(np.int32) + 1024).astype(np.int16).tobytes()
    return ds


def write_series(folder, voxels, affine, series_uid=None, skip=(), number=1):
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    names = [f"img{random.Random(k).randint(0, 10**6):07d}_{k}.dcm" for k in range(voxels.shape[2])]
    random.Random(1).shuffle(names)  # file names in no spatial order
    for k in range(voxels.shape[2]):
        if k not in skip:
            _dataset(voxels, affine, k, series_uid, "1.2.3.4", "1.2.3.4.5", number).save_as(folder / names[k], enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file")
    return series_uid


def test_series_in_shuffled_files_matches_the_nifti_voxel_for_voxel(ct, tmp_path):
    voxels, affine, _ = ct
    write_series(tmp_path / "series", voxels, affine)
    volume = read_volume(tmp_path / "series", window="lung")
    assert volume.kind == "dicom-series" and volume.num_slices == voxels.shape[2]
    np.testing.assert_array_equal(volume.values, np.transpose(voxels, (2, 1, 0)).astype(np.float32))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    assert volume.spacing == pytest.approx((affine[2, 2], affine[1, 1], affine[0, 0]), abs=1e-5)
    assert len(volume.datasets) == voxels.shape[2]
    positions = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert positions == sorted(positions)


def test_one_window_for_the_whole_volume(ct, tmp_path):
    voxels, affine, _ = ct
    nifti = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(voxels, affine), nifti)
    volume = read_nifti_volume(nifti)
    low, high = np.percentile(voxels, (0.5, 99.5))
    assert volume.window == pytest.approx(((low + high) / 2, high - low))
    # the same HU value gets the same grey level on every slice
    value = np.median(voxels)
    grey = {int(volume.images[k][volume.values[k] == value][0]) for k in range(volume.num_slices) if (volume.values[k] == value).any()}
    assert len(grey) == 1
    series = tmp_path / "series"
    write_series(series, voxels, affine)
    assert read_volume(series).window == pytest.approx(volume.window)
    np.testing.assert_array_equal(read_volume(series).images, volume.images)


def test_missing_slice_is_a_clear_error(ct, tmp_path):
    voxels, affine, _ = ct
    write_series(tmp_path / "series", voxels, affine, skip={3})
    with pytest.raises(InputError, match=r"about 1 slice\(s\) missing between"):
        read_dicom_series(tmp_path / "series")


def test_mixed_series_need_a_uid(ct, tmp_path):
    voxels, affine, _ = ct
    first = write_series(tmp_path / "mixed", voxels, affine, number=1)
    second = write_series(tmp_path / "mixed", voxels[:, :, :5] + 7, affine, number=2)
    with pytest.raises(InputError, match="mixes 2 DICOM series") as error:
        read_volume(tmp_path / "mixed")
    assert first in str(error.value) and second in str(error.value)
    chosen = read_volume(tmp_path / "mixed", series_uid=second)
    assert chosen.num_slices == 5 and chosen.series_instance_uid == second
    np.testing.assert_array_equal(chosen.values, np.transpose(voxels[:, :, :5] + 7, (2, 1, 0)))
    with pytest.raises(InputError, match="holds no series 9.9"):
        read_volume(tmp_path / "mixed", series_uid="9.9")


def test_duplicate_and_empty_folders_are_refused(ct, tmp_path):
    voxels, affine, _ = ct
    uid = write_series(tmp_path / "dup", voxels, affine)
    extra = next((tmp_path / "dup").glob("*.dcm"))
    shutil.copy(extra, tmp_path / "dup" / "copy.dcm")
    with pytest.raises(InputError, match="share the position"):
        read_volume(tmp_path / "dup", series_uid=uid)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no DICOM image files"):
        read_volume(tmp_path / "empty")


def write_multiframe(path, voxels, affine, order):
    """An Enhanced CT multi-frame file holding the slices in `order`, each frame with its own position."""
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    first = _dataset(voxels, affine, 0, "1.2.3.9", "1.2.3.4", "1.2.3.4.5")
    ds = _dataset(voxels, affine, 0, "1.2.3.9", "1.2.3.4", "1.2.3.4.5")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.NumberOfFrames = len(order)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept"):
        delattr(ds, keyword)
    shared = pydicom.Dataset()
    measures, orientation, rescale = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    measures.PixelSpacing, measures.SliceThickness = first.PixelSpacing, first.SliceThickness
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = Sequence([measures]), Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        item, plane = pydicom.Dataset(), pydicom.Dataset()
        plane.ImagePositionPatient = _dataset(voxels, affine, k, "1", "1", "1").ImagePositionPatient
        item.PlanePositionSequence = Sequence([plane])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = b"".join(_dataset(voxels, affine, k, "1", "1", "1").PixelData for k in order)
    ds.save_as(path, enforce_file_format=True)


def test_multiframe_frames_sorted_by_position(ct, tmp_path):
    voxels, affine, _ = ct
    order = [3, 0, 7, 1, 5, 2, 6, 4]
    write_multiframe(tmp_path / "mf.dcm", voxels, affine, order)
    volume = read_volume(tmp_path / "mf.dcm")
    assert volume.kind == "dicom-multiframe" and volume.frames == tuple(order.index(k) for k in range(8))
    np.testing.assert_array_equal(volume.values, np.transpose(voxels, (2, 1, 0)))
    np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
    with pytest.raises(InputError, match="missing"):
        write_multiframe(tmp_path / "gap.dcm", voxels, affine, [0, 1, 2, 4, 5])
        read_dicom_multiframe(tmp_path / "gap.dcm")


def test_labels_round_trip_through_nibabel_and_highdicom(ct, tmp_path):
    hd = pytest.importorskip("highdicom")
    voxels, affine, truth = ct
    write_series(tmp_path / "series", voxels, affine)
    volume = read_volume(tmp_path / "series")
    labels = volume.from_voxels(truth)  # label voxels -> slices x H x W, as a segmentation would be
    labels[2, :3, :4] = 2  # a second structure
    out = write_volume_nifti(tmp_path / "seg.nii.gz", labels, volume)
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, affine, atol=1e-4)
    expected = truth.copy()
    expected[:4, :3, 2] = 2
    np.testing.assert_array_equal(np.asarray(back.dataobj), expected)

    seg_path = write_volume_dicom_seg(tmp_path / "seg.dcm", labels, volume, {1: "nodule", 2: "corner"})
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    referenced = {str(item.ReferencedSOPInstanceUID) for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert referenced == set(uids)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), labels == 1)
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), labels == 2)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["nodule", "corner"]


def test_nifti_volume_labels_keep_the_header(ct, tmp_path):
    voxels, affine, truth = ct
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(voxels, affine), path)
    for axis in (0, 1, 2):
        volume = read_nifti_volume(path, axis=axis)
        assert volume.values.shape[0] == voxels.shape[axis]
        out = write_volume_nifti(tmp_path / f"labels{axis}.nii.gz", volume.from_voxels(truth), volume)
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), truth)
    with pytest.raises(InputError, match="does not match the volume"):
        write_volume_nifti(tmp_path / "bad.nii.gz", np.zeros((2, 2, 2), np.uint8), volume)
    with pytest.raises(InputError, match="needs a DICOM input"):
        write_volume_dicom_seg(tmp_path / "bad.dcm", volume.from_voxels(truth), volume)
