"""Zoom for small objects: window geometry, prompts into the window, masks pasted back, and the Predictor's path."""

from __future__ import annotations

import numpy as np
import pytest

from sammed_edge.runtime import InputError, Predictor, metrics, processing, zoom
from sammed_edge.runtime.samples import phantom


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    return Predictor.from_bundle(tiny_bundle, threads=1)


def test_window_is_a_square_around_the_box_inside_the_image():
    window = zoom.zoom_window((100, 50, 119, 59), (300, 400), context=3.0, min_side=16)
    x0, y0, x1, y1 = window
    assert (x1 - x0, y1 - y0) == (60, 60)
    assert (x0 + x1) / 2 == pytest.approx(110, abs=1) and (y0 + y1) / 2 == pytest.approx(55, abs=1)


def test_window_near_the_border_is_shifted_not_shrunk():
    for box in [(0, 0, 9, 9), (390, 290, 399, 299), (0, 295, 5, 299)]:
        x0, y0, x1, y1 = zoom.zoom_window(box, (300, 400), context=3.0, min_side=40)
        assert 0 <= x0 < x1 <= 400 and 0 <= y0 < y1 <= 300
        assert (x1 - x0, y1 - y0) == (40, 40)
        assert x0 <= box[0] and box[2] < x1 and y0 <= box[1] and box[3] < y1


def test_window_larger_than_the_image_becomes_the_image():
    assert zoom.zoom_window((10, 10, 20, 20), (50, 70), min_side=96) == (0, 0, 70, 50)
    # larger along one axis only: that axis is whole, the other keeps the window's side
    assert zoom.zoom_window((100, 10, 110, 20), (60, 400), context=1.0, min_side=80) == (66, 0, 146, 60)


def test_small_box_rule_and_policy_choices():
    assert zoom.is_small_box((0, 0, 20, 20), (400, 400), 0.25)
    assert not zoom.is_small_box((0, 0, 120, 20), (400, 400), 0.25)
    policy = zoom.ZoomPolicy(max_fraction=0.25, boxes=True, clicks=False)
    assert zoom.box_window(policy, (0, 0, 20, 20), (400, 400)) is not None
    assert zoom.box_window(policy, (0, 0, 200, 20), (400, 400)) is None
    assert zoom.box_window(None, (0, 0, 20, 20), (400, 400)) is None
    mask = np.zeros((400, 400), bool)
    mask[10:20, 10:20] = True
    assert zoom.mask_window(policy, mask, None, (400, 400)) is None  # clicks not zoomed by this policy
    clicks = zoom.ZoomPolicy(clicks=True)
    assert zoom.mask_window(clicks, mask, np.array([[15.0, 15.0]]), (400, 400)) is not None
    # a click far away makes the object's extent large: no zoom
    assert zoom.mask_window(clicks, mask, np.array([[15.0, 15.0], [390.0, 390.0]]), (400, 400)) is None
    with pytest.raises(ValueError, match="invalid zoom policy"):
        zoom.ZoomPolicy(max_fraction=0)
    assert zoom.ZoomPolicy.from_dict(policy.to_dict()) == policy


def test_known_mask_inside_a_crop_round_trips_exactly():
    rng = np.random.default_rng(0)
    mask = np.zeros((123, 157), dtype=bool)
    mask[40:70, 60:90] = rng.random((30, 30)) > 0.3
    window = zoom.zoom_window(metrics.box_from_mask(mask), mask.shape, context=2.0, min_side=8)
    crop = zoom.crop(mask, window)
    pasted = zoom.paste(crop[None], window, mask.shape, fill=False)[0]
    np.testing.assert_array_equal(pasted, mask)
    with pytest.raises(ValueError, match="do not fit the window"):
        zoom.paste(crop[None, 1:], window, mask.shape)


def test_prompts_into_the_window():
    prompts = processing.Prompts(np.array([[50.0, 60.0], [5.0, 5.0], [0.0, 0.0]]), np.array([1, 0, -1]),
                                 np.array([30.0, 40.0, 80.0, 90.0]), None)
    moved = zoom.prompts_into(prompts, (40, 50, 100, 110))
    # the outside background click is dropped, the padding point kept at (0, 0)
    np.testing.assert_array_equal(moved.point_coords, [[10.0, 10.0], [0.0, 0.0]])
    np.testing.assert_array_equal(moved.point_labels, [1, -1])
    np.testing.assert_array_equal(moved.box, [0.0, 0.0, 40.0, 40.0])  # clipped to the window
    with pytest.raises(InputError, match="no point or box prompt lies inside"):
        zoom.prompts_into(processing.Prompts(np.array([[5.0, 5.0]]), np.array([1]), None, None), (40, 50, 100, 110))


@pytest.mark.parametrize("window", [(0, 0, 0, 10), (-1, 0, 10, 10), (0, 0, 10, 999), (0, 0, 10), (0.5, 0, 10, 10)])
def test_bad_windows_are_refused(predictor, window):
    image, truth = phantom(120, seed=3)
    predictor.set_image(image)
    with pytest.raises(InputError, match="zoom window"):
        predictor.predict(box=metrics.box_from_mask(truth), window=window)


def test_zoomed_prediction_is_the_crop_segmented_and_pasted_back(predictor):
    image, truth = phantom(160, seed=1)
    box = metrics.box_from_mask(truth)
    window = zoom.zoom_window(box, image.shape[:2], context=1.5, min_side=32)
    assert window != (0, 0, image.shape[1], image.shape[0])
    predictor.set_image(image)
    masks, iou, low_res = predictor.predict(box=box, multimask_output=False, window=window, return_logits=True)
    misses = predictor.cache_misses
    again, _, _ = predictor.predict(box=box, multimask_output=False, window=window, return_logits=True)
    assert predictor.cache_misses == misses  # the window's embedding is kept

    x0, y0, x1, y1 = window
    predictor.set_image(zoom.crop(image, window))
    direct, direct_iou, direct_low = predictor.predict(box=box - np.array([x0, y0, x0, y0]), multimask_output=False,
                                                       return_logits=True)
    assert masks.shape == (1, *image.shape[:2])
    np.testing.assert_array_equal(masks[..., y0:y1, x0:x1], direct)
    assert np.all(masks[..., :y0, :] == zoom.OUTSIDE_LOGIT) and np.all(masks[..., :, x1:] == zoom.OUTSIDE_LOGIT)
    np.testing.assert_array_equal(iou, direct_iou)
    np.testing.assert_array_equal(low_res, direct_low)
    np.testing.assert_array_equal(again, masks)


def test_window_of_the_whole_image_changes_nothing(predictor):
    image, truth = phantom(90, seed=2)
    box = metrics.box_from_mask(truth)
    window = zoom.zoom_window(box, image.shape[:2], min_side=500)
    assert window == (0, 0, image.shape[1], image.shape[0])
    predictor.set_image(image)
    plain = predictor.predict(box=box, multimask_output=False)
    zoomed = predictor.predict(box=box, multimask_output=False, window=window)
    for a, b in zip(plain, zoomed):
        np.testing.assert_array_equal(a, b)


def test_prompt_at_the_image_corner(predictor):
    image, _ = phantom(140, seed=4)
    predictor.set_image(image)
    box = np.array([0.0, 0.0, 6.0, 5.0])
    window = zoom.box_window(zoom.ZoomPolicy(min_side=24), box, image.shape[:2])
    assert window[:2] == (0, 0)
    masks, _, _ = predictor.predict(box=box, multimask_output=False, window=window)
    assert masks.shape == (1, *image.shape[:2]) and not masks[0, window[3]:, :].any()
    # a click on the last pixel row and column, around a small mask in that corner
    height, width = image.shape[:2]
    mask = np.zeros((height, width), dtype=bool)
    mask[-4:, -4:] = True
    point = np.array([[width - 1.0, height - 1.0]])
    window = zoom.mask_window(zoom.ZoomPolicy(clicks=True, min_side=24), mask, point, (height, width))
    assert window[2:] == (width, height)
    masks, _, low_res = predictor.predict(point_coords=point, point_labels=[1], window=window, multimask_output=False)
    assert masks.shape == (1, height, width) and low_res.shape[-1] == predictor.policy.low_res_size


def test_segment_command_zooms_into_a_small_box_as_the_predictor_does(predictor, tiny_bundle, tmp_path):
    import cv2

    from sammed_edge.runtime import cli
    from sammed_edge.runtime.io import read_mask

    image = np.zeros((240, 240, 3), np.uint8)
    cv2.circle(image, (60, 70), 9, (200, 200, 200), -1)
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), image)
    box = [48, 58, 72, 82]
    window = zoom.box_window(zoom.ZoomPolicy(), box, image.shape[:2])
    assert window is not None
    predictor.set_image(image)
    expected, _, _ = predictor.predict(box=np.array(box, float), multimask_output=False, best_only=True, window=window)
    plain, _, _ = predictor.predict(box=np.array(box, float), multimask_output=False, best_only=True)
    assert not np.array_equal(expected, plain)  # so the command must have zoomed to match
    for flag, reference in (("boxes", expected), ("off", plain)):
        out = tmp_path / f"{flag}.png"
        assert cli.main(["segment", "--bundle", str(tiny_bundle), "--threads", "1", "--image", str(path),
                         "--box", *map(str, box), "--zoom", flag, "--out", str(out)]) == 0
        np.testing.assert_array_equal(read_mask(out) > 0, reference[0])
