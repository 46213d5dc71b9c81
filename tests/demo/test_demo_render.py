"""Display geometry, the displayed-pixel -> image-pixel mapping, and overlays."""

from __future__ import annotations

import base64
import math

import cv2
import numpy as np
import pytest

from sammed_edge.demo import state as st
from sammed_edge.demo.render import (
    display_geometry,
    display_to_pixel,
    candidate_at,
    label_color,
    png_data_url,
    render_candidates,
    render_overlay,
    to_display,
)


@pytest.mark.parametrize(
    "size, shown",
    [((64, 64), (512, 512)), ((128, 128), (512, 512)), ((240, 320), (480, 640)), ((41, 33), (533, 429)),
     ((600, 800), (600, 800)), ((2000, 1000), (800, 400)), ((1, 5000), (1, 800))],
)
def test_display_geometry(size, shown):
    geometry = display_geometry(size)
    assert geometry.display_size == shown
    if shown[0] > size[0]:
        assert shown[0] % size[0] == 0 and shown[1] % size[1] == 0  # enlarged by a whole factor


def gradio_index(u: float, v: float) -> tuple[int, int]:
    """What Gradio's image preview reports for a pointer at continuous displayed-image position (u, v)."""
    return (math.floor(u + 0.5), math.floor(v + 0.5))  # JavaScript's Math.round


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (240, 320), (41, 33)])
def test_clicks_inside_an_enlarged_pixel_map_back_to_it(size):
    geometry = display_geometry(size)
    sy, sx = geometry.scale
    height, width = size
    # anywhere in the block showing pixel (x, y) but the last half display pixel, where Gradio rounds up
    offsets = [(0.0, 0.0), (sx / 2, sy / 2), (sx - 0.51, 0.0), (0.0, sy - 0.51)]
    for y in range(height):
        for x in range(width):
            for du, dv in offsets:
                assert display_to_pixel(gradio_index(x * sx + du, y * sy + dv), geometry) == (x, y)


def test_clicks_on_a_shrunk_image_land_within_one_pixel():
    geometry = display_geometry((1600, 1200))
    sy, sx = geometry.scale
    rng = np.random.default_rng(0)
    for u, v in rng.random((500, 2)) * np.array(geometry.display_size[::-1]):
        x, y = display_to_pixel(gradio_index(u, v), geometry)
        assert abs(x - u / sx) <= 1.5 and abs(y - v / sy) <= 1.5


def test_display_to_pixel_clamps_to_the_image():
    geometry = display_geometry((64, 64))
    assert display_to_pixel((-3, 512), geometry) == (0, 63)
    assert display_to_pixel([511.0, 0.0], geometry) == (63, 0)


def test_to_display_keeps_pixels_crisp():
    geometry = display_geometry((3, 4))
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    shown = to_display(image, geometry)
    factor = geometry.display_size[0] // 3
    np.testing.assert_array_equal(shown, np.kron(image, np.ones((factor, factor), dtype=np.uint8)))
    mask = image % 2 == 0
    assert to_display(mask, geometry).dtype == bool


def session_with_masks():
    state = st.new_session((16, 16))
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:12, 8:14] = True
    prediction = st.Prediction(masks=masks, iou=np.array([0.9, 0.2], np.float32), low_res=np.zeros((2, 4, 4), np.float32))
    state = st.with_prediction(st.click(state, 3, 3), prediction)
    return state, masks[0]


def prediction_from(mask: np.ndarray) -> st.Prediction:
    return st.Prediction(masks=mask[None], iou=np.array([0.9], np.float32), low_res=np.zeros((1, 4, 4), np.float32))


def test_overlay_tints_the_mask_only():
    state, mask = session_with_masks()
    geometry = display_geometry(state.size)
    base = to_display(np.full((16, 16, 3), 100, np.uint8), geometry)
    plain = render_overlay(base, state, geometry, opacity=0.5, contour=False, prompts=False)
    inside = to_display(mask, geometry)
    expected = np.round(0.5 * 100 + 0.5 * np.array(label_color(1))).astype(np.uint8)
    assert (plain[inside] == expected).all()
    assert (plain[~inside] == 100).all()
    unchanged = render_overlay(base, state, geometry, opacity=0.0, contour=False, prompts=False)
    np.testing.assert_array_equal(unchanged, base)
    outlined = render_overlay(base, state, geometry, opacity=0.0, contour=True, prompts=False)
    assert (outlined != base).any(axis=2).sum() > 0
    with_prompts = render_overlay(base, state, geometry, opacity=0.0, contour=False, prompts=True)
    assert (with_prompts != base).any()  # the click is drawn


@pytest.mark.parametrize("opacity", [0.05, 0.45, 1.0])
def test_overlay_blend_is_the_rounded_mix_on_any_image(opacity):
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    state = st.with_prediction(st.click(st.new_session((37, 53)), 5, 5), prediction_from(rng.random((37, 53)) > 0.6))
    assert state.active.mask is not None and state.active.mask.any() and not state.active.mask.all()
    geometry = display_geometry((37, 53), min_side=1)
    shown = render_overlay(base, state, geometry, opacity=opacity, contour=False, prompts=False)
    mask = state.active.mask
    # the mix in float32, element by element (what boolean indexing computed before the lookup table)
    mixed = np.round((1 - opacity) * base.astype(np.float32) + opacity * np.array(label_color(1), np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(shown[mask], mixed[mask])
    np.testing.assert_array_equal(shown[~mask], base[~mask])


def test_png_data_url_round_trips():
    image = np.random.default_rng(4).integers(0, 256, (31, 47, 3), dtype=np.uint8)
    url = png_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(decoded[:, :, ::-1], image)
    with pytest.raises(ValueError, match="uint8"):
        png_data_url(image.astype(np.float32))
    with pytest.raises(ValueError, match="h x w x 3"):
        png_data_url(image[:, :, 0])


def test_candidate_strip():
    state, _ = session_with_masks()
    geometry = display_geometry(state.size)
    display = to_display(np.zeros((16, 16, 3), np.uint8), geometry)
    strip = render_candidates(display, state, side=100, gap=4)
    assert strip.shape == (100, 2 * 100 + 4, 3) and strip.dtype == np.uint8
    assert [candidate_at(u, side=100, gap=4) for u in (0, 99, 104, 203)] == [0, 0, 1, 1]
    assert (strip[:, 100:104] == 255).all()
    assert render_candidates(display, st.new_session((16, 16))) is None
