"""Building bundles: verified graphs, a complete manifest, and no bundle at all when a check fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sammed_edge.export import graphs
from sammed_edge.export.bundler import TARGETS, build_bundle
from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.runtime import Predictor
from sammed_edge.runtime.bundle import SCHEMA, SCHEMA_VERSION, load_bundle, sha256_file
from sammed_edge.runtime.samples import phantom



def test_manifest_is_complete(tiny_bundle, tiny_model):
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["schema"] == SCHEMA and manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["model"]["family"] == "sam_med2d" and manifest["model"]["config"] == tiny_model.config
    assert manifest["processing"] == tiny_model.processing_policy().to_dict()
    assert manifest["target"] == {"name": "onnx-fp32", "backend": "onnxruntime", "precision": {"encoder": "fp32", "decoder": "fp32"}}
    for name in ("encoder", "decoder"):
        graph = manifest["graphs"][name]
        assert graph["sha256"] == sha256_file(tiny_bundle / graph["file"])
        assert graph["opset"] == 17 and graph["nodes"] > 0
    decoder = manifest["graphs"]["decoder"]["contract"]
    assert [spec["name"] for spec in decoder["inputs"]] == ["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"]
    assert decoder["inputs"][1]["shape"] == [1, "num_points", 2]
    assert decoder["candidates"] == {"single": [0], "multi": [1, 2, 3]}
    prov = manifest["provenance"]
    assert {"torch", "onnx", "onnxruntime", "onnxslim", "numpy"} <= set(prov["tools"]) and prov["created"]
    check = manifest["verification"]
    assert check["passed"] and check["encoder"]["embedding_max_abs"] <= 1e-4 and check["decoder"]["prompt_sets"] == 10
    assert check["predictor"]["min_mask_agreement"] >= 0.999


@pytest.mark.parametrize("seed", range(3))
def test_runtime_predictor_equals_torch(tiny_bundle, tiny_model, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (90 + 30 * seed, 130, 3), dtype=np.uint8)
    runtime, reference = Predictor.from_bundle(tiny_bundle), TorchPredictor(tiny_model)
    runtime.set_image(image)
    reference.set_image(image)
    height, width = image.shape[:2]
    prompts = [
        dict(box=[10, 12, width - 20, height - 15], multimask_output=False),
        dict(point_coords=rng.uniform(0, [width, height], (4, 2)), point_labels=[1, 0, 1, 1]),
        dict(point_coords=[[width / 3, height / 2]], point_labels=[1], box=[5, 5, width / 2, height / 2], best_only=True),
    ]
    for kwargs in prompts:
        ours, ours_iou, ours_low = runtime.predict(**kwargs)
        ref, ref_iou, ref_low = reference.predict(**kwargs)
        np.testing.assert_allclose(ours_low, ref_low, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(ours_iou, ref_iou, atol=1e-5)
        logits = reference.predict(**kwargs, return_logits=True)[0]
        assert not ((ours != ref) & (np.abs(logits) > 1e-3)).any()
    # the mask prompt path: feed the previous low-res logits back
    mask = runtime.predict(point_coords=[[20, 20]], point_labels=[1], best_only=True)[2][0]
    ours = runtime.predict(point_coords=[[20, 20]], point_labels=[1], mask_input=mask, multimask_output=False)[2]
    ref = reference.predict(point_coords=[[20, 20]], point_labels=[1], mask_input=mask, multimask_output=False)[2]
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=1e-4)


def test_failed_verification_leaves_no_bundle(tmp_path, tiny_model, monkeypatch):
    # A graph that is not the model's function: exported from a perturbed copy of the weights.
    other = randomized_copy(tiny_model)
    real_export = graphs.export_decoder
    monkeypatch.setattr(graphs, "export_decoder", lambda model, path, **kw: real_export(other, path, **kw))
    out = tmp_path / "bundle"
    with pytest.raises(graphs.VerificationError, match=r"low_res_logits_max_abs: max \|exported - torch\| = .* exceeds"):
        build_bundle(tiny_model, TARGETS["onnx-fp32"], out, [phantom(100)[0]], model_name="tiny", checkpoint=None)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "scratch folders must be removed"


def test_existing_folder_that_is_not_a_bundle_is_not_replaced(tmp_path, tiny_model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bundle"):
        build_bundle(tiny_model, TARGETS["onnx-fp32"], out, [phantom(100)[0]], model_name="tiny", checkpoint=None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_load_bundle(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.policy.family == "sam_med2d" and bundle.backend == "onnxruntime"


def randomized_copy(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.mask_decoder.parameters():
            param.mul_(1.5)
    return other
