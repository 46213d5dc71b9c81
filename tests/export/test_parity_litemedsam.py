"""LiteMedSAM with its released weights against the official 2D inference procedure (path B), 6 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.runtime import processing

N_IMAGES = 6


@pytest.fixture(scope="module")
def predictor(lite_medsam_model):
    torch.set_num_threads(2)
    return TorchPredictor(lite_medsam_model)


def test_weights_are_the_released_file(lite_medsam_model):
    from sammed_edge.export.models.checkpoints import LITE_MEDSAM_SHA256
    from sammed_edge.runtime.bundle import sha256_file

    assert sha256_file(lite_medsam_model.checkpoint_path) == LITE_MEDSAM_SHA256
    assert lite_medsam_model.family == "lite_medsam"


def test_preprocessing_and_embedding_image0(predictor, litemedsam_parity):
    tensor, geometry = processing.preprocess_image(litemedsam_parity["img0_image"], predictor.policy)
    np.testing.assert_allclose(tensor, litemedsam_parity["img0_B_input_tensor"], atol=1e-6, rtol=0)
    predictor.set_image(litemedsam_parity["img0_image"])
    np.testing.assert_allclose(predictor.embedding.numpy(), litemedsam_parity["img0_B_image_embedding"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(N_IMAGES))
def test_official_procedure(predictor, litemedsam_parity, index):
    v = litemedsam_parity
    image = v[f"img{index}_image"]
    predictor.set_image(image)
    geometry = predictor.geometry
    assert geometry.resized_size == tuple(v[f"img{index}_B_new_size"])
    inputs = processing.decoder_inputs(processing.check_prompts(geometry, predictor.policy, box=v[f"img{index}_box_orig"]), geometry, predictor.policy)
    np.testing.assert_array_equal(inputs["point_coords"][0].reshape(-1), v[f"img{index}_B_box_256"])

    masks, iou, low_res = predictor.predict(box=v[f"img{index}_box_orig"], multimask_output=False)
    np.testing.assert_allclose(low_res, v[f"img{index}_B_low_res_logits"][0], atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(iou, v[f"img{index}_B_iou_prediction"][0], atol=1e-4, rtol=0)
    assert masks.shape == (1, *image.shape[:2])
    agreement = (masks[0] == v[f"img{index}_B_mask"].astype(bool)).mean()
    assert agreement >= 0.999, f"only {agreement:.5f} of mask pixels agree"


def test_full_resolution_logits_image0(predictor, litemedsam_parity):
    v = litemedsam_parity
    predictor.set_image(v["img0_image"])
    logits, _, _ = predictor.predict(box=v["img0_box_orig"], multimask_output=False, return_logits=True)
    np.testing.assert_allclose(logits, v["img0_B_fullres_logits"][0], atol=1e-3, rtol=1e-4)


def test_multimask_returns_every_candidate(predictor, litemedsam_parity):
    predictor.set_image(litemedsam_parity["img1_image"])
    masks, iou, low_res = predictor.predict(box=litemedsam_parity["img1_box_orig"])
    assert masks.shape[0] == iou.shape[0] == low_res.shape[0] == 3
    best, best_iou, _ = predictor.predict(box=litemedsam_parity["img1_box_orig"], best_only=True)
    np.testing.assert_array_equal(best[0], masks[int(np.argmax(iou))])
    assert best_iou[0] == iou.max()
