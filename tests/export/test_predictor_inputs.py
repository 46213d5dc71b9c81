"""Bad input is refused with a message naming the problem; good input of every accepted form works."""

from __future__ import annotations

import numpy as np
import pytest

from sammed_edge.export.models import build_model
from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.runtime import InputError


@pytest.fixture(scope="module")
def predictor():
    model = build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32)
    predictor = TorchPredictor(model)
    predictor.set_image(np.zeros((80, 120, 3), dtype=np.uint8))
    return predictor


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((32, 32, 3), dtype=np.float32), "must be uint8"),
        (np.zeros((32, 32, 3), dtype=np.uint16), "must be uint8"),
        (np.zeros((32, 32, 4), dtype=np.uint8), r"H x W or H x W x 3"),
        (np.zeros((2, 32, 32, 3), dtype=np.uint8), r"H x W or H x W x 3"),
        (np.zeros((0, 32, 3), dtype=np.uint8), "empty"),
        (np.zeros((32,), dtype=np.uint8), r"H x W or H x W x 3"),
        ([[0, 1], [2, 3]], "numpy array"),
        (None, "numpy array"),
    ],
)
def test_bad_images(image, message):
    predictor = TorchPredictor(build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32))
    with pytest.raises(InputError, match=message):
        predictor.set_image(image)
    assert not predictor.is_image_set


def test_predict_before_set_image():
    predictor = TorchPredictor(build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32))
    with pytest.raises(InputError, match="no image set"):
        predictor.predict(box=[0, 0, 10, 10])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point_coords=[[10, 10], [20, 20]], point_labels=[1]), "one label per point"),
        (dict(point_coords=[[10, 10]], point_labels=[1, 0]), "one label per point"),
        (dict(point_coords=[[10, 10]]), "given together"),
        (dict(point_labels=[1]), "given together"),
        (dict(point_coords=[[10, 10]], point_labels=[2]), r"must be 1 \(foreground\), 0 \(background\) or -1"),
        (dict(point_coords=[[10, 10]], point_labels=[0.5]), "must be 1"),
        (dict(point_coords=[[10, 10, 3]], point_labels=[1]), r"N x 2"),
        (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), r"N >= 1"),
        (dict(point_coords=[[130, 10]], point_labels=[1]), r"outside the 120 x 80"),
        (dict(point_coords=[[10, -1]], point_labels=[0]), r"outside the 120 x 80"),
        (dict(point_coords=[[np.nan, 10]], point_labels=[1]), "NaN"),
        (dict(point_coords=[["a", "b"]], point_labels=[1]), "numeric"),
        (dict(box=[50, 10, 40, 30]), r"x1 < x0"),
        (dict(box=[10, 30, 40, 20]), r"y1 < y0"),
        (dict(box=[10, 10, 40]), "4 values"),
        (dict(box=[10, 10, 130, 40]), "outside"),
        (dict(mask_input=np.zeros((32, 32), dtype=np.float32)), r"must be 16 x 16"),
        (dict(mask_input=np.full((16, 16), np.inf, dtype=np.float32)), "infinite"),
        (dict(), "no prompt given"),
    ],
)
def test_bad_prompts(predictor, kwargs, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(**kwargs)


def test_accepted_forms(predictor):
    gray = np.random.default_rng(0).integers(0, 256, (80, 120), dtype=np.uint8)
    predictor.set_image(gray)
    rgb_result = None
    for image in (gray, gray[:, :, None], np.repeat(gray[:, :, None], 3, axis=2)):
        predictor.set_image(image)
        result = predictor.predict(point_coords=(60, 40), point_labels=1)  # one point without nesting
        if rgb_result is not None:
            np.testing.assert_array_equal(result[0], rgb_result[0])
        rgb_result = result
    masks, iou, low_res = rgb_result
    assert masks.shape == (3, 80, 120) and masks.dtype == bool
    assert iou.shape == (3,) and iou.dtype == np.float32
    assert low_res.shape == (3, 16, 16) and low_res.dtype == np.float32
    # a padding point is allowed anywhere; a box on the border is inside the image
    predictor.predict(point_coords=[[60, 40], [0, 0]], point_labels=[1, -1], box=[0, 0, 120, 80], mask_input=low_res[:1])
    single, single_iou, _ = predictor.predict(box=[10, 10, 60, 50], multimask_output=False)
    assert single.shape == (1, 80, 120) and single_iou.shape == (1,)
