"""The click's fast path (cropped, blocked, thresholded upsampling; reused backend buffers) returns exactly the
values of the whole-frame path: full-resolution logits and masks bit for bit, on real bundle graphs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sammed_edge.runtime import Predictor, processing
from sammed_edge.runtime.processing import FAMILY_POLICIES, ImageGeometry


def whole_frame_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The bilinear resize as one fancy-indexed pass over the whole frame (the same taps and float32 products)."""
    r0, r1, rw0, rw1 = processing._linear_taps(maps.shape[-2], size[0])
    c0, c1, cw0, cw1 = processing._linear_taps(maps.shape[-1], size[1])
    cols = maps[..., c0] * cw0 + maps[..., c1] * cw1
    return cols[..., r0, :] * rw0[:, None] + cols[..., r1, :] * rw1[:, None]


def whole_frame_logits(low_res: np.ndarray, geometry: ImageGeometry, policy) -> np.ndarray:
    """Low-res logits -> the model input's frame -> crop of the image's region -> the original size."""
    side = policy.input_size
    frame = low_res if low_res.shape[-1] == side else whole_frame_resize(low_res, (side, side))
    height, width = geometry.resized_size
    crop = frame[..., :height, :width]
    return crop if crop.shape[-2:] == geometry.original_size else whole_frame_resize(crop, geometry.original_size)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("family", sorted(FAMILY_POLICIES))
@pytest.mark.parametrize("size", [(512, 512), (100, 200), (37, 513), (1, 1), (300, 17), (129, 64)])
def test_postprocess_equals_the_whole_frame_path(family, size):
    policy = FAMILY_POLICIES[family]
    rng = np.random.default_rng(sum(size))
    low_res = (3 * rng.standard_normal((2, policy.low_res_size, policy.low_res_size))).astype(np.float32)
    low_res[:, :2] = 0.0  # logits exactly at the threshold
    geometry = ImageGeometry(size, processing.resized_size(size, policy))
    expected = whole_frame_logits(low_res, geometry, policy)
    assert same_bits(processing.postprocess_logits(low_res, geometry, policy), expected)
    masks = processing.postprocess_logits(low_res, geometry, policy, threshold=policy.mask_threshold)
    assert same_bits(masks, expected > policy.mask_threshold)


PROMPTS = {
    "box": dict(box=[10, 8, 90, 70]),
    "points": dict(point_coords=[[40, 30], [70, 50], [20, 60]], point_labels=[1, 0, 1]),
    "box and point": dict(box=[5, 5, 120, 90], point_coords=[[60, 40]], point_labels=[1]),
}


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def tiny_predictor(request, tiny_bundle):
    return Predictor.from_bundle(tiny_bundle, backend=request.param, threads=1)


@pytest.mark.parametrize("resize", ["stretch", "longest_side"])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predict_equals_the_whole_frame_path(tiny_predictor, resize, prompt):
    """Every output of `predict` against the decoder's own outputs post-processed the whole-frame way, with and
    without multimask, best_only, logits and a mask prompt; "longest_side" pads the image, so the crop counts."""
    predictor = tiny_predictor
    predictor.policy = dataclasses.replace(predictor.bundle.policy, resize=resize, prompt_scale="longest_side"
                                           if resize == "longest_side" else "resized_size")
    try:
        image = np.random.default_rng(3).integers(0, 256, (96, 131, 3), dtype=np.uint8)
        predictor.set_image(image)
        embedding, geometry = predictor._current()
        previous = None
        for multimask in (False, True):
            for best_only in (False, True):
                for mask_input in (None, previous):
                    args = dict(**PROMPTS[prompt], mask_input=mask_input, multimask_output=multimask)
                    masks, iou, low = predictor.predict(**args, best_only=best_only)
                    logits, iou_l, low_l = predictor.predict(**args, best_only=best_only, return_logits=True)
                    checked = processing.check_prompts(geometry, predictor.policy, args.get("point_coords"),
                                                       args.get("point_labels"), args.get("box"), mask_input)
                    want_low, want_iou = predictor._decode(embedding, processing.decoder_inputs(checked, geometry, predictor.policy), multimask)
                    if best_only and want_low.shape[0] > 1:
                        best = int(np.argmax(want_iou))
                        want_low, want_iou = want_low[best : best + 1], want_iou[best : best + 1]
                    want_logits = whole_frame_logits(want_low, geometry, predictor.policy)
                    assert same_bits(low, want_low) and same_bits(low_l, want_low)
                    assert same_bits(iou, want_iou) and same_bits(iou_l, want_iou)
                    assert same_bits(logits, want_logits)
                    assert same_bits(masks, want_logits > predictor.policy.mask_threshold)
                    assert masks.shape == (want_low.shape[0], 96, 131)
                    previous = processing.mask_prompt_from_logits(low[0], predictor.policy)
    finally:
        predictor.policy = predictor.bundle.policy
