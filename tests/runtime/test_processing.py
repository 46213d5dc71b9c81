"""The shared numpy processing: resize rules, prompt transforms, decoder inputs, policies as data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sammed_edge.runtime import InputError, processing
from sammed_edge.runtime.processing import FAMILY_POLICIES, ImageGeometry, ProcessingPolicy, family_policy


def test_nearest_resize_uses_opencvs_rule():
    # OpenCV maps destination d to min(floor(d * (1 / (256 / L))), L - 1) in float64; for L = 420 this picks
    # 104, 209, 314 at d = 64, 128, 192 where floor(d * 420 / 256) would give 105, 210, 315.
    width = 420
    image = np.tile(np.arange(width, dtype=np.uint16).astype(np.float32), (3, 1))
    image = np.repeat(image[:, :, None], 3, axis=2)
    resized = cv2.resize(image, (256, 3), interpolation=processing.INTERPOLATIONS["nearest"])
    assert [resized[0, d, 0] for d in (64, 128, 192)] == [104, 209, 314]


def test_sam_med2d_preprocessing_normalises_then_stretches():
    policy = family_policy("sam_med2d")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 420, 3), dtype=np.uint8)
    tensor, geometry = processing.preprocess_image(image, policy)
    assert tensor.shape == (1, 3, 256, 256) and tensor.dtype == np.float32
    assert geometry == ImageGeometry((300, 420), (256, 256))
    # pixel (0, 0) of the output is source pixel (0, 0), normalised per channel
    expected = (image[0, 0].astype(np.float32) - np.float32(policy.pixel_mean)) / np.float32(policy.pixel_std)
    np.testing.assert_array_equal(tensor[0, :, 0, 0], expected)


def test_lite_medsam_preprocessing_pads_and_min_max():
    policy = family_policy("lite_medsam")
    image = np.full((100, 200, 3), 50, dtype=np.uint8)
    image[10:20, 10:20] = 250
    tensor, geometry = processing.preprocess_image(image, policy)
    assert geometry.resized_size == (128, 256)
    assert tensor[0, :, :128].min() == 0.0 and tensor[0, :, :128].max() == 1.0
    assert not tensor[0, :, 128:].any(), "padding must be zero"


def test_constant_image_does_not_divide_by_zero():
    tensor, _ = processing.preprocess_image(np.full((40, 40), 7, dtype=np.uint8), family_policy("lite_medsam"))
    assert np.isfinite(tensor).all() and not tensor.any()


@pytest.mark.parametrize("family", sorted(FAMILY_POLICIES))
def test_policy_round_trips_through_json(family):
    policy = family_policy(family)
    assert ProcessingPolicy.from_dict(json.loads(json.dumps(policy.to_dict()))) == policy


def test_policy_rejects_unknown_values():
    with pytest.raises(ValueError, match="interpolation"):
        family_policy("sam_med2d", interpolation="cubic")
    with pytest.raises(ValueError, match="unknown processing policy fields"):
        ProcessingPolicy.from_dict({**family_policy("sam").to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="unknown model family"):
        family_policy("sam3")


def test_prompt_transforms_per_family():
    geometry = ImageGeometry((300, 420), (256, 256))
    np.testing.assert_allclose(processing.transform_points(np.array([[420.0, 300.0]]), geometry, family_policy("sam_med2d")), [[256, 256]])
    lite = family_policy("lite_medsam")
    lite_geometry = ImageGeometry((300, 420), processing.resized_size((300, 420), lite))
    assert lite_geometry.resized_size == (183, 256)
    box = processing.transform_box(np.array([100.0, 50.0, 201.0, 99.0]), lite_geometry, lite)
    np.testing.assert_array_equal(box, np.floor(np.array([100, 50, 201, 99]) * 256 / 420).astype(np.float32))
    sam = family_policy("sam")
    sam_geometry = ImageGeometry((300, 420), processing.resized_size((300, 420), sam))
    assert sam_geometry.resized_size == (731, 1024)
    np.testing.assert_allclose(processing.transform_points(np.array([[420.0, 300.0]]), sam_geometry, sam), [[1024, 731]], rtol=1e-6)


def test_decoder_inputs_follow_sams_onnx_convention():
    policy = family_policy("sam_med2d")
    geometry = ImageGeometry((256, 256), (256, 256))
    points_only = processing.decoder_inputs(
        processing.check_prompts(geometry, policy, [[10, 20], [30, 40]], [1, 0]), geometry, policy
    )
    assert points_only["point_coords"].shape == (1, 3, 2)
    np.testing.assert_array_equal(points_only["point_labels"], [[1, 0, -1]])
    assert points_only["has_mask_input"][0] == 0 and points_only["mask_input"].shape == (1, 1, 64, 64)
    with_box = processing.decoder_inputs(
        processing.check_prompts(geometry, policy, [[10, 20]], [1], box=[5, 6, 70, 80], mask_input=np.ones((64, 64))),
        geometry, policy,
    )
    np.testing.assert_array_equal(with_box["point_labels"], [[1, 2, 3]])
    np.testing.assert_array_equal(with_box["point_coords"][0, 1:], [[5, 6], [70, 80]])
    assert with_box["has_mask_input"][0] == 1 and with_box["mask_input"].dtype == np.float32
    for array in with_box.values():
        assert array.dtype == np.float32


def test_mask_prompt_convention():
    logits = np.array([[0.0, 2.0], [-2.0, 10.0]], dtype=np.float32)
    probs = processing.mask_prompt_from_logits(logits, family_policy("sam_med2d"))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_array_equal(processing.mask_prompt_from_logits(logits, family_policy("sam")), logits)


def test_postprocess_crops_padding_before_resizing():
    policy = family_policy("lite_medsam")
    geometry = ImageGeometry((100, 200), (128, 256))
    low_res = np.full((1, 256, 256), -5.0, dtype=np.float32)
    low_res[:, :128] = 5.0  # the valid region is foreground, the padding background
    logits = processing.postprocess_logits(low_res, geometry, policy)
    assert logits.shape == (1, 100, 200) and (logits > 0).all()


def test_postprocess_never_aliases_its_input():
    policy = family_policy("lite_medsam")
    low_res = np.zeros((1, 256, 256), dtype=np.float32)
    out = processing.postprocess_logits(low_res, ImageGeometry((256, 256), (256, 256)), policy)
    out[...] = 1
    assert not low_res.any()


def test_huge_image_is_refused():
    with pytest.raises(InputError, match="side limit"):
        processing.as_rgb_uint8(np.zeros((processing.MAX_IMAGE_SIDE + 1, 1), dtype=np.uint8))
