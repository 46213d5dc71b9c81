"""DICOM reading (modality LUT, VOI, MONOCHROME1, colour, frames, geometry, errors) and DICOM outputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from sammed_edge.runtime.errors import InputError  # noqa: E402
from sammed_edge.runtime.io import (  # noqa: E402
    DicomImage,
    decoder_advice,
    read_dicom,
    read_nifti_slice,
    write_dicom_seg,
    write_nifti_labels,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def dicom_file(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return path


CT = "CT_small.dcm"


def _pixel(ds_array: np.ndarray, raw: int) -> tuple[int, int]:
    return tuple(int(v) for v in np.argwhere(ds_array == raw)[0])


# ------------------------------------------------------------------------------------------- grayscale


def test_ct_values_are_hounsfield_units():
    result = read_dicom(dicom_file(CT))
    raw = pydicom.dcmread(dicom_file(CT)).pixel_array
    assert result.values.dtype == np.float32 and result.values.shape == (128, 128)
    np.testing.assert_array_equal(result.values, raw.astype(np.float32) - 1024.0)  # slope 1, intercept -1024
    assert result.image.shape == (128, 128, 3) and result.image.dtype == np.uint8
    assert result.voi == "percentile"  # CT_small has no window of its own
    assert result.modality == "CT"


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        # abdomen 40/400 -> [-160, 240]; y = (HU + 160) / 400 * 255
        ("abdomen", {-224: 0, -160: 0, -100: 38, 0: 102, 100: 166, 360: 255}),
        # lung -600/1500 -> [-1350, 150]; y = (HU + 1350) / 1500 * 255
        ("lung", {-224: 191, -160: 202, 40: 236, 360: 255}),
        # brain 40/80 -> [0, 80]; y = HU / 80 * 255
        ("brain", {-100: 0, 0: 0, 60: 191, 80: 255, 100: 255}),
        # bone 400/1800 -> [-500, 1300]; y = (HU + 500) / 1800 * 255
        ("bone", {-224: 39, 0: 71, 100: 85, 360: 122}),
    ],
)
def test_ct_presets_give_hand_computed_values(window, expected):
    result = read_dicom(dicom_file(CT), window=window)
    raw = pydicom.dcmread(dicom_file(CT)).pixel_array
    assert result.voi == f"preset:{window}"
    for hu, grey in expected.items():
        row, col = _pixel(raw, hu + 1024)
        assert result.values[row, col] == hu
        assert result.image[row, col].tolist() == [grey] * 3, (window, hu)


def test_explicit_window_equals_preset():
    preset = read_dicom(dicom_file(CT), window="abdomen")
    explicit = read_dicom(dicom_file(CT), window=(40, 400))
    np.testing.assert_array_equal(preset.image, explicit.image)
    assert explicit.window == (40.0, 400.0) and explicit.voi == "window"


def test_file_window_is_used_by_default():
    result = read_dicom(dicom_file("MR_small.dcm"))
    assert result.voi == "file window" and result.window == (600.0, 1600.0)
    # DICOM LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped
    x = result.values.astype(np.float64)
    expected = np.clip(((x - 599.5) / 1599.0 + 0.5) * 255.0, 0, 255)
    assert np.abs(result.image[:, :, 0] - expected).max() <= 0.51


def test_percentile_when_no_window_and_minmax_option():
    result = read_dicom(dicom_file(CT), intensity="minmax")
    values = result.values
    assert result.voi == "minmax"
    assert result.image[np.unravel_index(values.argmin(), values.shape)][0] == 0
    assert result.image[np.unravel_index(values.argmax(), values.shape)][0] == 255
    default = read_dicom(dicom_file(CT))
    low, high = np.percentile(values, [0.5, 99.5])
    assert default.window == pytest.approx(((low + high) / 2, high - low))


def test_unusable_file_window_falls_back_to_percentile():
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    ds.WindowWidth = 0
    result = read_dicom(ds)
    assert result.voi == "percentile"


def test_bare_dataset_without_file_meta(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    del ds.file_meta
    ds.preamble = None
    path = tmp_path / "bare.dcm"
    pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_dicom(path).image, read_dicom(dicom_file("MR_small.dcm")).image)


def test_voi_lut_sequence(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.clip(np.arange(4096) * 8, 0, 4095).tolist()
    ds.VOILUTSequence = [item]
    result = read_dicom(ds)
    assert result.voi == "file VOI LUT" and result.window is None
    raw = ds.pixel_array.astype(np.float64)
    expected = np.rint(np.clip(raw * 8, 0, 4095) / 4095 * 255)  # the LUT's output range 0..4095 -> 0..255
    np.testing.assert_array_equal(result.image[:, :, 0], expected)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(dicom_file(CT))
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    normal = read_dicom(dicom_file(CT), window="abdomen")
    inverted = read_dicom(path, window="abdomen")
    np.testing.assert_array_equal(inverted.values, normal.values)
    np.testing.assert_array_equal(inverted.image, 255 - normal.image)
    assert inverted.photometric_interpretation == "MONOCHROME1"


# ------------------------------------------------------------------------------------------- frames and colour


def _two_frame_file(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(dicom_file(CT))
    frames = np.stack([np.full((128, 128), 1024, np.int16), np.full((128, 128), 1124, np.int16)])
    frames[1, :10, :10] = 864
    ds.set_pixel_data(frames, "MONOCHROME2", 16)
    path = tmp_path / "two.dcm"
    ds.save_as(path)
    return path


def test_multiframe_selects_a_frame(tmp_path):
    path = _two_frame_file(tmp_path)
    first = read_dicom(path, frame=0, window="abdomen")
    second = read_dicom(path, frame=1, window="abdomen")
    assert first.num_frames == second.num_frames == 2 and second.frame == 1
    assert np.all(first.values == 0.0)
    assert second.values[0, 0] == -160 and second.values[50, 50] == 100
    assert second.image[0, 0, 0] == 0 and second.image[50, 50, 0] == 166
    with pytest.raises(InputError, match=r"frame 2 is out of range.*valid 0\.\.1"):
        read_dicom(path, frame=2)
    with pytest.raises(InputError, match="out of range"):
        read_dicom(path, frame=-1)


def test_multiframe_colour_rle():
    frames = pydicom.dcmread(dicom_file("SC_rgb_rle_2frame.dcm")).pixel_array
    for index in (0, 1):
        result = read_dicom(dicom_file("SC_rgb_rle_2frame.dcm"), frame=index)
        np.testing.assert_array_equal(result.image, frames[index])
    assert not np.array_equal(frames[0], frames[1])


def test_rgb_passes_through():
    result = read_dicom(dicom_file("SC_rgb_rle.dcm"), window="lung")
    np.testing.assert_array_equal(result.image, pydicom.dcmread(dicom_file("SC_rgb_rle.dcm")).pixel_array)
    assert result.window is None and result.voi == "colour"
    assert result.values.shape == (100, 100, 3) and result.values.dtype == np.float32


def test_16bit_colour_is_scaled_to_8bit():
    eight = read_dicom(dicom_file("SC_rgb_rle.dcm")).image
    sixteen = read_dicom(dicom_file("SC_rgb_rle_16bit.dcm")).image
    np.testing.assert_array_equal(sixteen, eight)


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_ybr_is_converted_to_rgb(name):
    result = read_dicom(dicom_file(name))
    reference = read_dicom(dicom_file("SC_rgb_rle.dcm")).image  # the same picture stored as RGB
    assert result.image.shape == reference.shape
    assert np.abs(result.image.astype(int) - reference).mean() < 3


def test_ybr_multiframe_jpeg():
    result = read_dicom(dicom_file("examples_ybr_color.dcm"), frame=5)
    assert result.num_frames == 30 and result.image.shape == (240, 320, 3)


def test_palette_colour():
    result = read_dicom(dicom_file("examples_palette.dcm"))
    assert result.image.shape == (350, 800, 3) and result.image.dtype == np.uint8 and result.voi == "colour"


def test_geometry_and_uids():
    ds = pydicom.dcmread(dicom_file(CT))
    result = read_dicom(dicom_file(CT))
    assert result.pixel_spacing == pytest.approx(tuple(float(v) for v in ds.PixelSpacing))
    assert result.image_position == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    assert result.image_orientation == pytest.approx(tuple(float(v) for v in ds.ImageOrientationPatient))
    assert result.slice_thickness == pytest.approx(5.0)
    assert result.study_instance_uid == ds.StudyInstanceUID
    assert result.series_instance_uid == ds.SeriesInstanceUID
    assert result.sop_instance_uid == ds.SOPInstanceUID
    assert result.frame_of_reference_uid == ds.FrameOfReferenceUID
    assert "PixelData" not in result.dataset and result.dataset.SOPInstanceUID == ds.SOPInstanceUID


def test_dataset_input_is_not_modified():
    ds = pydicom.dcmread(dicom_file(CT))
    result = read_dicom(ds)
    assert isinstance(result, DicomImage) and result.path is None and "PixelData" in ds


# ------------------------------------------------------------------------------------------- errors


def test_truncated_file_from_pydicom():
    with pytest.raises(InputError, match="truncated"):
        read_dicom(dicom_file("MR_truncated.dcm"))


@pytest.mark.parametrize("fraction", [0.0005, 0.002, 0.01, 0.05, 0.3, 0.9, 0.99])
def test_own_truncations(tmp_path, fraction):
    # CT_small ends with its pixel data and a short trailing padding element: every cut here loses pixels.
    data = Path(dicom_file(CT)).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(InputError):
        read_dicom(path)


def test_no_pixel_data():
    with pytest.raises(InputError, match="no pixel data.*RT Plan"):
        read_dicom(dicom_file("rtplan.dcm"))


def test_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    with pytest.raises(InputError, match="not a DICOM"):
        read_dicom(tmp_path / "x.dcm")
    with pytest.raises(InputError, match="does not exist"):
        read_dicom(tmp_path / "missing.dcm")
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_dicom(tmp_path / "empty.dcm")


def test_missing_decoder_names_the_plugin():
    # JPEG Lossless (Process 14 SV1): Pillow cannot read it; pylibjpeg-libjpeg or GDCM can.
    with pytest.raises(InputError) as info:
        read_dicom(dicom_file("SC_rgb_jpeg_gdcm.dcm"))
    message = str(info.value)
    assert "JPEG Lossless" in message and "1.2.840.10008.1.2.4.70" in message
    assert "pylibjpeg-libjpeg" in message and "python-gdcm" in message


def test_failed_decoder_suggests_another_plugin():
    # JPEG 2000 the installed Pillow cannot handle: the error names the openjpeg plugin.
    with pytest.raises(InputError, match="pylibjpeg-openjpeg"):
        read_dicom(dicom_file("GDCMJ2K_TextGBR.dcm"))


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(dicom_file(CT))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds["PixelData"].is_undefined_length = True
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    with pytest.raises(InputError, match="convert the file to an uncompressed transfer syntax"):
        read_dicom(ds)


def test_decoder_advice_table():
    assert "pylibjpeg-openjpeg" in decoder_advice(pydicom.uid.JPEG2000Lossless)
    assert "pylibjpeg-openjpeg" in decoder_advice(pydicom.uid.HTJ2K)
    assert "pyjpegls" in decoder_advice(pydicom.uid.JPEGLSLossless)
    assert "pylibjpeg-libjpeg" in decoder_advice(pydicom.uid.JPEGBaseline8Bit)
    assert "pylibjpeg-rle" in decoder_advice(pydicom.uid.RLELossless)
    assert "convert" in decoder_advice("1.2.3.4")


@pytest.mark.parametrize("window", ["liver", (40, 0), "nonsense"])
def test_bad_window(window):
    with pytest.raises(InputError, match="window"):
        read_dicom(dicom_file(CT), window=window)


def test_bad_frame_type():
    with pytest.raises(InputError, match="frame must be an integer"):
        read_dicom(dicom_file(CT), frame=0.5)


def test_runtime_io_imports_without_medical_extras():
    script = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pydicom", "nibabel", "highdicom"):
                    raise ImportError(f"{name} is blocked in this process")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from sammed_edge.runtime import io
        for call, extra in (
            (lambda: io.read_dicom("x.dcm"), "medical"),
            (lambda: io.read_nifti_slice("x.nii"), "medical"),
            (lambda: io.write_dicom_seg("x.dcm", np.zeros((2, 2), bool), "y.dcm"), "dicomseg"),
        ):
            try:
                call()
            except ImportError as exc:
                assert f"pip install sammed-edge[{extra}]" in str(exc), exc
            else:
                raise AssertionError("no ImportError")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ------------------------------------------------------------------------------------------- outputs


def test_nifti_from_dicom_reference(tmp_path):
    nib = pytest.importorskip("nibabel")
    reference = read_dicom(dicom_file(CT))
    labels = np.zeros((128, 128), np.uint8)
    labels[10, 20] = 3
    labels[40:60, 70:90] = 1
    path = write_nifti_labels(tmp_path / "ct_labels.nii.gz", labels, reference)
    image = nib.load(path)
    assert image.shape == (128, 128, 1) and image.get_data_dtype() == np.uint8
    data = np.asanyarray(image.dataobj)
    assert data[20, 10, 0] == 3  # i = column, j = row
    # Pixel (row 10, column 20) by hand: LPS = IPP + col * dc * X + row * dr * Y, then RAS = (-x, -y, z).
    ipp = np.array([-158.135803, -179.035797, -75.699997])
    spacing = 0.661468
    lps = ipp + 20 * spacing * np.array([1.0, 0, 0]) + 10 * spacing * np.array([0, 1.0, 0])
    ras = image.affine @ np.array([20, 10, 0, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-4)
    assert image.header.get_sform(coded=True)[1] == 1 and image.header.get_qform(coded=True)[1] == 1
    back = read_nifti_slice(path, index=0, axis=2, window=(1, 2))
    np.testing.assert_array_equal(back.values, labels)


def test_nifti_from_dicom_without_geometry(tmp_path):
    reference = read_dicom(dicom_file("SC_rgb_rle.dcm"))
    with pytest.raises(InputError, match="ImagePositionPatient"):
        write_nifti_labels(tmp_path / "x.nii", np.zeros((100, 100), np.uint8), reference)


def test_dicom_seg_roundtrip(tmp_path):
    hd = pytest.importorskip("highdicom")
    reference = read_dicom(dicom_file(CT))
    mask = np.zeros((128, 128), bool)
    mask[30:70, 40:90] = True
    mask[0, 0] = True
    path = write_dicom_seg(tmp_path / "seg.dcm", mask, reference, labels=["liver"])
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.SegmentSequence[0].SegmentLabel == "liver"
    assert seg.StudyInstanceUID == reference.study_instance_uid
    assert seg.FrameOfReferenceUID == reference.frame_of_reference_uid
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == reference.sop_instance_uid
    pixels = seg.get_pixels_by_source_instance([reference.sop_instance_uid], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask)
    again = pydicom.dcmread(path)
    np.testing.assert_array_equal(again.pixel_array.astype(bool), mask)


def test_dicom_seg_label_map_and_path_reference(tmp_path):
    hd = pytest.importorskip("highdicom")
    labels = np.zeros((64, 64), np.uint8)
    labels[5:20, 5:20] = 1
    labels[30:40, 30:50] = 2
    path = write_dicom_seg(tmp_path / "seg2.dcm", labels, dicom_file("MR_small.dcm"), labels=["a", "b"])
    seg = hd.seg.segread(path)
    uid = pydicom.dcmread(dicom_file("MR_small.dcm")).SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1, 2])
    for number in (1, 2):
        np.testing.assert_array_equal(pixels[0, :, :, number - 1].astype(bool), labels == number)


def test_dicom_seg_without_patient_geometry(tmp_path):
    hd = pytest.importorskip("highdicom")
    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 60:90] = 255  # an 8-bit 0/255 mask is one segment
    path = write_dicom_seg(tmp_path / "sc.dcm", mask, read_dicom(dicom_file("SC_rgb_rle.dcm")))
    seg = hd.seg.segread(path)
    assert len(seg.SegmentSequence) == 1
    uid = pydicom.dcmread(dicom_file("SC_rgb_rle.dcm")).SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([uid], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), mask > 0)


def test_dicom_seg_errors(tmp_path):
    pytest.importorskip("highdicom")
    reference = read_dicom(dicom_file(CT))
    with pytest.raises(InputError, match="do not match"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((10, 10), bool), reference)
    with pytest.raises(InputError, match="label"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((128, 128), bool), reference, labels=["a", "b"])
    with pytest.raises(InputError, match="single-frame"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((100, 100), bool), dicom_file("SC_rgb_rle_2frame.dcm"))
    with pytest.raises(InputError, match="does not exist"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((128, 128), bool), tmp_path / "missing.dcm")
