"""Raster image reading (8/16-bit, intensity policy, channels, errors) and the PNG writers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io import (
    WINDOW_PRESETS,
    read_image,
    read_mask,
    write_label_png,
    write_mask_png,
    write_overlay_png,
)
from sammed_edge.runtime.io.images import intensity_range, linear_to_uint8, resolve_window, to_uint8


def _write(path, array):
    assert cv2.imwrite(str(path), array)
    return path


def _ramp16(outlier: int = 65535) -> np.ndarray:
    """A 20 x 50 uint16 ramp 1000..1999 with one hot pixel."""
    image = (np.arange(1000, dtype=np.uint16) + 1000).reshape(20, 50)
    image[0, 0] = outlier
    return image


def _expected(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(np.rint((values.astype(np.float64) - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- 8-bit


def test_gray_8bit_passes_through_and_is_replicated(tmp_path):
    gray = np.array([[0, 100, 110], [200, 255, 7]], dtype=np.uint8)
    image = read_image(_write(tmp_path / "g.png", gray))
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[:, :, channel], gray)


def test_narrow_8bit_range_is_not_stretched(tmp_path):
    gray = np.full((8, 8), 100, np.uint8)
    gray[2:4, 2:4] = 110
    image = read_image(_write(tmp_path / "narrow.png", gray))
    assert image.min() == 100 and image.max() == 110


def test_colour_is_returned_as_rgb(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[:, :, 0] = 10  # blue
    bgr[:, :, 1] = 20
    bgr[:, :, 2] = 30  # red
    image = read_image(_write(tmp_path / "c.png", bgr))
    assert image[0, 0].tolist() == [30, 20, 10]


def test_alpha_is_dropped(tmp_path):
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 2] = 200
    bgra[..., 3] = 0
    image = read_image(_write(tmp_path / "a.png", bgra))
    assert image.shape == (3, 3, 3) and image[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".tif"])
def test_other_formats(tmp_path, suffix):
    gray = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (16, 1))
    image = read_image(_write(tmp_path / f"x{suffix}", gray))
    assert image.shape == (16, 25, 3)
    assert np.abs(image[:, :, 0].astype(int) - gray).max() <= 8  # JPEG is lossy


# ------------------------------------------------------------------------------------------- 16-bit policy


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_percentile_policy_ignores_an_outlier(tmp_path, suffix):
    ramp = _ramp16()
    image = read_image(_write(tmp_path / f"r{suffix}", ramp))
    low, high = np.percentile(ramp.astype(np.float64), [0.5, 99.5])
    np.testing.assert_array_equal(image[:, :, 0], _expected(ramp, low, high))
    assert image[0, 0, 0] == 255  # the outlier saturates
    assert 120 <= np.median(image) <= 135  # the anatomy keeps the full grey range


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_minmax_policy(tmp_path, suffix):
    ramp = _ramp16()
    image = read_image(_write(tmp_path / f"r{suffix}", ramp), intensity="minmax")
    np.testing.assert_array_equal(image[:, :, 0], _expected(ramp, 1001.0, 65535.0))
    assert np.median(image) < 8  # what the percentile default avoids


def test_16bit_colour_png_keeps_hue(tmp_path):
    bgr = np.zeros((10, 10, 3), np.uint16)
    bgr[..., 2] = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600  # red ramp
    bgr[..., 1] = 30000
    image = read_image(_write(tmp_path / "c16.png", bgr), intensity="minmax")
    np.testing.assert_array_equal(image[..., 1], _expected(np.full((10, 10), 30000), 0, 59400))
    assert image[..., 2].max() == 0


def test_float_tiff_uses_the_policy(tmp_path):
    values = np.linspace(-1.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    image = read_image(_write(tmp_path / "f.tif", values), intensity="minmax")
    assert image[0, 0, 0] == 0 and image[-1, -1, 0] == 255


def test_constant_16bit_image(tmp_path):
    image = read_image(_write(tmp_path / "flat.png", np.full((5, 5), 4000, np.uint16)))
    assert image.shape == (5, 5, 3) and not image.any()


# ------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_image(tmp_path / "empty.png")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


def test_truncated_png(tmp_path):
    data = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))[1].tobytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "cut.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("this is text, not pixels")
    with pytest.raises(InputError, match="corrupt, truncated or another format"):
        read_image(tmp_path / "notes.png")


def test_unknown_intensity_policy(tmp_path):
    with pytest.raises(InputError, match="intensity"):
        read_image(_write(tmp_path / "g.png", np.zeros((2, 2), np.uint8)), intensity="auto")


def test_read_mask_any_depth(tmp_path):
    labels = np.zeros((6, 6), np.uint16)
    labels[1:3, 1:3] = 1
    mask = read_mask(_write(tmp_path / "m16.png", labels))
    assert mask.dtype == bool and mask.sum() == 4
    with pytest.raises(InputError, match="does not exist"):
        read_mask(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------- intensity helpers


def test_window_helpers():
    assert resolve_window("Lung") == WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert resolve_window((40, 400)) == (40.0, 400.0)
    assert resolve_window(None) is None
    for bad in ("liver", (40, 0), (40, -1), (np.nan, 10), "x" * 3, (1, 2, 3), 5):
        with pytest.raises(InputError):
            resolve_window(bad)
    # abdomen: [-160, 240] -> 0..255
    image, used = to_uint8(np.array([-1000.0, -160.0, 0.0, 100.0, 240.0, 3000.0]), "abdomen")
    assert used == (40.0, 400.0)
    assert image.tolist() == [0, 0, 102, 166, 255, 255]


def test_linear_map_edge_cases():
    assert linear_to_uint8(np.array([np.nan, 5.0]), 0.0, 10.0).tolist() == [0, 128]
    assert linear_to_uint8(np.array([1.0, 2.0]), 1.0, 1.0).tolist() == [0, 255]
    assert intensity_range(np.array([np.nan, np.inf])) == (0.0, 0.0)


# ------------------------------------------------------------------------------------------- PNG writers


def test_write_mask_png_roundtrip(tmp_path):
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    path = write_mask_png(tmp_path / "sub" / "mask.png", mask)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8 and set(np.unique(stored)) == {0, 255}
    np.testing.assert_array_equal(stored == 255, mask)
    np.testing.assert_array_equal(read_mask(path), mask)


def test_write_label_png_8_and_16_bit(tmp_path):
    small = np.arange(12).reshape(3, 4)
    stored = cv2.imread(str(write_label_png(tmp_path / "l8.png", small)), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, small)
    big = small * 1000
    stored = cv2.imread(str(write_label_png(tmp_path / "l16.png", big)), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, big)


@pytest.mark.parametrize(
    "labels",
    [np.array([[-1, 0]]), np.array([[0.5, 1.0]]), np.array([[70000]]), np.zeros((0, 3), np.uint8), np.zeros((2, 2, 2)), "ab"],
)
def test_write_label_png_rejects(tmp_path, labels):
    with pytest.raises(InputError):
        write_label_png(tmp_path / "bad.png", labels)


def test_write_overlay_png_keeps_its_rendering(tmp_path):
    image = np.full((12, 12, 3), 100, np.uint8)
    mask = np.zeros((12, 12), bool)
    mask[3:9, 3:9] = True
    path = write_overlay_png(tmp_path / "o.png", image, mask)
    rgb = cv2.imread(str(path))[:, :, ::-1]
    blended = np.round(0.55 * 100 + 0.45 * np.array([255, 64, 64])).astype(np.uint8)
    assert rgb[5, 5].tolist() == blended.tolist()  # inside: blended
    assert rgb[3, 3].tolist() == [255, 64, 64]  # contour
    assert rgb[0, 0].tolist() == [100, 100, 100]  # outside: untouched
    with pytest.raises(InputError, match="does not match"):
        write_overlay_png(tmp_path / "o.png", image, mask[:5])


def test_writers_stay_importable_from_images():
    from sammed_edge.runtime.io import images, writers

    assert images.write_mask_png is writers.write_mask_png
    assert images.write_overlay_png is writers.write_overlay_png
