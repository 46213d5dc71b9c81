"""SAM-Med2D architecture against outputs of the official classes (small random instance, 10 prompt cases)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed_edge.export.models import load_model
from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.runtime import processing

N_CASES = 10


@pytest.fixture(scope="module")
def predictor(sammed2d_parity):
    folder, vectors = sammed2d_parity
    torch.set_num_threads(2)
    model = load_model(folder / "state_dict.pth", folder / "config.json")
    predictor = TorchPredictor(model)
    predictor.set_image(vectors["image"])
    return predictor


def case(vectors, index, key):
    return vectors.get(f"case{index}_{key}")


def test_loaded_as_sam_med2d_with_its_policy(predictor):
    assert predictor.model.family == "sam_med2d"
    assert predictor.policy.input_size == 256 and predictor.policy.low_res_size == 64
    assert predictor.policy.interpolation == "nearest" and predictor.policy.normalize_before_resize


def test_preprocessing_is_exact(predictor, sammed2d_parity):
    _, vectors = sammed2d_parity
    tensor, geometry = processing.preprocess_image(vectors["image"], predictor.policy)
    assert geometry.original_size == tuple(vectors["original_size"])
    np.testing.assert_array_equal(tensor, vectors["input_tensor"])


def test_embedding_and_dense_pe(predictor, sammed2d_parity):
    _, vectors = sammed2d_parity
    np.testing.assert_allclose(predictor.embedding.numpy(), vectors["image_embedding"], atol=1e-4, rtol=0)
    dense_pe = predictor.model.prompt_encoder.get_dense_pe().detach().numpy()
    np.testing.assert_allclose(dense_pe, vectors["image_pe"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("index", range(N_CASES))
def test_prompt_transforms_and_embeddings(predictor, sammed2d_parity, index):
    _, vectors = sammed2d_parity
    geometry = predictor.geometry
    prompts = processing.check_prompts(
        geometry, predictor.policy, case(vectors, index, "point_coords"), case(vectors, index, "point_labels"),
        case(vectors, index, "box"), case(vectors, index, "mask_input"),
    )
    inputs = processing.decoder_inputs(prompts, geometry, predictor.policy)
    n_points = 0
    if case(vectors, index, "transformed_point_coords") is not None:
        expected = case(vectors, index, "transformed_point_coords")[0]
        n_points = len(expected)
        np.testing.assert_array_equal(inputs["point_coords"][0, :n_points], expected)
        np.testing.assert_array_equal(inputs["point_labels"][0, :n_points], case(vectors, index, "transformed_point_labels")[0])
    if case(vectors, index, "transformed_box") is not None:
        np.testing.assert_array_equal(inputs["point_coords"][0, -2:].reshape(-1), case(vectors, index, "transformed_box").reshape(-1))
    with torch.no_grad():
        encoder = predictor.model.prompt_encoder
        sparse = encoder.embed_labelled_points(torch.from_numpy(inputs["point_coords"]), torch.from_numpy(inputs["point_labels"]))
        dense = encoder.embed_masks(torch.from_numpy(inputs["mask_input"])) if inputs["has_mask_input"][0] else encoder.no_mask_dense(1)
    np.testing.assert_allclose(sparse.detach().numpy(), case(vectors, index, "sparse_embeddings"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(dense.detach().numpy(), case(vectors, index, "dense_embeddings"), atol=1e-4, rtol=0)


@pytest.mark.parametrize("index", range(N_CASES))
def test_case_matches_official_outputs(predictor, sammed2d_parity, index):
    _, vectors = sammed2d_parity
    args = dict(
        point_coords=case(vectors, index, "point_coords"), point_labels=case(vectors, index, "point_labels"),
        box=case(vectors, index, "box"), mask_input=case(vectors, index, "mask_input"),
        multimask_output=bool(case(vectors, index, "multimask_output")),
    )
    # SAM's convention: every candidate the decoder emits.
    masks, iou, low_res = predictor.predict(**args)
    np.testing.assert_allclose(low_res, case(vectors, index, "decoder_low_res_all")[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou, case(vectors, index, "decoder_iou_all")[0], atol=1e-4, rtol=0)
    assert masks.dtype == bool and masks.shape == (low_res.shape[0], 300, 420)

    # SAM-Med2D's predictor: the candidate with the highest predicted IoU.
    masks, iou, low_res = predictor.predict(**args, best_only=True)
    np.testing.assert_allclose(low_res, case(vectors, index, "low_res_logits"), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(iou, case(vectors, index, "iou_predictions"), atol=1e-4, rtol=0)
    full = case(vectors, index, "masks_logits_fullres")
    if full is None:
        full = processing.postprocess_logits(case(vectors, index, "low_res_logits"), predictor.geometry, predictor.policy)
    differ = masks != case(vectors, index, "masks")
    assert not (differ & (np.abs(full) >= 1e-3)).any(), f"{differ.sum()} mask pixels differ away from the threshold"


@pytest.mark.parametrize("index", [0, 4, 8])
def test_full_resolution_logits(predictor, sammed2d_parity, index):
    _, vectors = sammed2d_parity
    full = processing.postprocess_logits(case(vectors, index, "low_res_logits"), predictor.geometry, predictor.policy)
    np.testing.assert_allclose(full, case(vectors, index, "masks_logits_fullres"), atol=1e-4, rtol=0)
    logits, _, _ = predictor.predict(
        case(vectors, index, "point_coords"), case(vectors, index, "point_labels"), case(vectors, index, "box"),
        case(vectors, index, "mask_input"), multimask_output=True, return_logits=True, best_only=True,
    )
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, case(vectors, index, "masks_logits_fullres"), atol=1e-3, rtol=1e-4)
