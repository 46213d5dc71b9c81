"""Properties of the simulated prompts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sammed_edge.export.train import prompts
from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.processing import family_policy

SIDE = 48


@st.composite
def masks_in_regions(draw):
    """(L x L mask, (h, w) region) with a non-empty rectangle-union mask inside the region."""
    height = draw(st.integers(8, SIDE))
    width = draw(st.integers(8, SIDE))
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    for _ in range(draw(st.integers(1, 3))):
        y0 = draw(st.integers(0, height - 1))
        x0 = draw(st.integers(0, width - 1))
        mask[y0 : draw(st.integers(y0 + 1, height)), x0 : draw(st.integers(x0 + 1, width))] = True
    return mask, (height, width)


@settings(max_examples=60, deadline=None)
@given(masks_in_regions(), st.integers(0, 2**32 - 1))
def test_jittered_box_stays_in_region_near_the_tight_box(case, seed):
    mask, (height, width) = case
    rng = np.random.default_rng(seed)
    box = prompts.jittered_box(mask, rng, (height, width), scale=0.1, max_shift=5)
    tight = metrics.box_from_mask(mask)
    x0, y0, x1, y1 = box
    assert 0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1
    assert np.all(np.abs(box - tight) <= 5)
    assert np.array_equal(prompts.jittered_box(mask, rng, (height, width), scale=0.0), tight)


@settings(max_examples=60, deadline=None)
@given(masks_in_regions(), st.sampled_from([1, 3, 5]), st.integers(0, 2**32 - 1))
def test_random_points_lie_in_the_region_with_true_labels(case, count, seed):
    mask, (height, width) = case
    coords, labels = prompts.random_points(mask, count, np.random.default_rng(seed), (height, width))
    assert coords.shape == (count, 2) and labels.shape == (count,)
    xs, ys = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.all((xs < width) & (ys < height))
    assert np.array_equal(mask[ys, xs], labels == 1)


@settings(max_examples=60, deadline=None)
@given(masks_in_regions(), st.integers(0, 2**32 - 1))
def test_corrective_clicks_land_in_errors_inside_the_region(case, seed):
    truth, (height, width) = case
    rng = np.random.default_rng(seed)
    pred = rng.random((SIDE, SIDE)) < 0.3
    pred[height:] = True  # errors in the padding never attract a click
    for centre in (True, False):
        click = prompts.corrective_click(pred, truth, rng, (height, width), centre=centre)
        inside = pred[:height, :width] != truth[:height, :width]
        if not inside.any():
            assert click is None
            continue
        x, y, label = click
        assert x < width and y < height and pred[y, x] != truth[y, x]
        assert label == int(truth[y, x])
    expected = metrics.next_click(pred[:height, :width], truth[:height, :width])
    assert prompts.corrective_click(pred, truth, rng, (height, width), centre=True) == expected


def test_no_click_for_a_perfect_prediction():
    truth = np.zeros((SIDE, SIDE), dtype=bool)
    truth[5:20, 5:20] = True
    assert prompts.corrective_click(truth.copy(), truth, np.random.default_rng(0), (30, 30), centre=False) is None


def test_first_click_is_the_interior_point():
    mask = np.zeros((SIDE, SIDE), dtype=bool)
    mask[10:31, 4:15] = True
    coords, labels = prompts.first_click(mask, (40, 40))
    # column 9 is 6 pixels from both sides; rows 15-25 tie, the first in row-major order wins
    assert coords.tolist() == [[9.0, 15.0]] and labels.tolist() == [1]


def test_decoder_prompts_follow_inference_order_and_frames():
    lite = family_policy("lite_medsam", input_size=64, low_res_size=64)
    coords, labels = prompts.decoder_prompts(np.array([[3.0, 4.0], [9.0, 9.0]]), np.array([1, prompts.PADDING]), None, lite)
    assert coords.tolist() == [[3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]
    assert labels.tolist() == [1.0, -1.0, -1.0]  # padding click, then SAM's padding point (no box)
    coords, labels = prompts.decoder_prompts(np.array([[3.0, 4.0]]), np.array([0]), np.array([1.0, 2.0, 30.0, 40.0]), lite)
    assert coords.tolist() == [[3.0, 4.0], [1.0, 2.0], [30.0, 40.0]] and labels.tolist() == [0.0, 2.0, 3.0]
    # SAM-Med2D: 64 x 64 decoder frame, 256 x 256 model input; pixel centres map to pixel centres
    stretch = family_policy("sam_med2d")
    coords, _ = prompts.decoder_prompts(np.array([[0.0, 63.0]]), np.array([1]), None, stretch)
    assert coords[0].tolist() == [1.5, 253.5]
    # the same inputs as the runtime builds from an image whose original frame is the model frame
    geometry = processing.ImageGeometry((256, 256), (256, 256))
    runtime = processing.decoder_inputs(processing.check_prompts(geometry, stretch, [[1.5, 253.5]], [1]), geometry, stretch)
    np.testing.assert_array_equal(runtime["point_coords"][0], coords)
