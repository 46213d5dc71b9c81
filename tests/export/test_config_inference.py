"""Checkpoints of configurations never seen before load by inference (or by config) and run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sammed_edge.export.models import CheckpointError, build_model, infer_config, load_model, model_from_config
from sammed_edge.export.predictor import TorchPredictor


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial values (zero-initialised tables would hide wiring mistakes)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def image(height: int = 150, width: int = 210, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def predictions(model, img):
    predictor = TorchPredictor(model)
    predictor.set_image(img)
    return predictor.predict(point_coords=[[60.0, 70.0], [100.0, 40.0]], point_labels=[1, 0], box=[20, 30, 150, 120])


def save(tmp_path, model, wrap=True):
    path = tmp_path / "ckpt.pth"
    state = model.state_dict()
    torch.save({"model": state} if wrap else state, path)
    return path


UNSEEN_VIT = [
    # other width, depth, heads, windows and global blocks, with adapters (SAM-Med2D family)
    dict(embed_dim=96, depth=5, num_heads=3, global_attn_indexes=[1, 4], window_size=6, img_size=128, out_chans=48,
         transformer_dim=48, iou_head_hidden_dim=40, decoder_embedding_dim=48, decoder_mlp_dim=96),
    # no adapters, every block windowed, non-square-friendly grid, decoder with 2 multimask outputs
    dict(adapter=False, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[], window_size=5, img_size=192,
         out_chans=32, transformer_dim=32, iou_head_hidden_dim=32, num_multimask_outputs=2,
         decoder_embedding_dim=32, decoder_mlp_dim=64, decoder_depth=1),
]


@pytest.mark.parametrize("overrides", UNSEEN_VIT, ids=["adapters-3heads-128px", "no-adapters-windowed-192px"])
def test_unseen_vit_loads_by_inference(tmp_path, overrides):
    original = randomize(build_model("sam_med2d_vit_b", **overrides))
    loaded = load_model(save(tmp_path, original))
    assert loaded.config == original.config
    for ours, ref in zip(predictions(loaded, image()), predictions(original, image())):
        np.testing.assert_array_equal(ours, ref)


def test_what_shapes_cannot_tell_comes_from_the_config(tmp_path):
    # Decoder heads are invisible in the weights: inference assumes SAM's 8, a config says otherwise.
    original = randomize(build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1],
                                     img_size=64, out_chans=32, transformer_dim=32, iou_head_hidden_dim=32,
                                     decoder_embedding_dim=32, decoder_mlp_dim=64, decoder_num_heads=2))
    path = save(tmp_path, original)
    inferred = load_model(path)
    assert inferred.config["mask_decoder"]["transformer"]["num_heads"] == 8
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(original.config))
    for loaded in (load_model(path, config_path), load_model(path, original.config)):
        for ours, ref in zip(predictions(loaded, image()), predictions(original, image())):
            np.testing.assert_array_equal(ours, ref)


def test_unseen_tiny_vit_loads_by_inference(tmp_path):
    original = randomize(build_model("lite_medsam", embed_dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_heads=[2, 2, 3, 4],
                                     window_sizes=[7, 5, 6, 4], mlp_ratio=2.0, mbconv_expand_ratio=2.0, neck_out=32, img_size=64))
    # TinyViT weights do not tell the input size (nor the unused stage-0 heads / window); the model's config does.
    loaded = load_model(save(tmp_path, original, wrap=False), original.config)
    inferred = infer_config(original.state_dict())
    assert inferred["image_encoder"] == {**original.config["image_encoder"], "img_size": 256}
    for ours, ref in zip(predictions(loaded, image()), predictions(original, image())):
        np.testing.assert_array_equal(ours, ref)


def test_original_sam_family(tmp_path):
    original = randomize(build_model("sam_vit_b", patch_size=64, embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1],
                                     window_size=7, out_chans=32, transformer_dim=32, iou_head_hidden_dim=32,
                                     decoder_embedding_dim=32, decoder_mlp_dim=64))
    loaded = load_model(save(tmp_path, original))
    assert loaded.family == "sam" and loaded.processing_policy().input_size == 1024
    masks, iou, low_res = predictions(loaded, image(300, 200))
    assert masks.shape == (3, 300, 200) and low_res.shape == (3, 64, 64)
    for ours, ref in zip((masks, iou, low_res), predictions(original, image(300, 200))):
        np.testing.assert_array_equal(ours, ref)


def test_config_in_the_official_layout(shared):
    folder = shared("reference", "parity-sammed2d-small")
    model = model_from_config(folder / "config.json")
    assert model.family == "sam_med2d"
    assert model.config["image_encoder"]["adapter_hidden"] == 32 and model.config["image_encoder"]["norm_eps"] == 1e-6
    inferred = infer_config(torch.load(folder / "state_dict.pth", weights_only=True)["model"])
    # Everything but the decoder's head count (4 here, SAM's 8 assumed) is read off the shapes.
    assert inferred["mask_decoder"]["transformer"].pop("num_heads") == 8
    assert model.config["mask_decoder"]["transformer"].pop("num_heads") == 4
    assert inferred == model.config


def test_wrong_config_is_refused_with_the_keys(tmp_path):
    original = build_model("sam_med2d_vit_b", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64)
    path = save(tmp_path, original)
    wrong = {**original.config, "image_encoder": {**original.config["image_encoder"], "depth": 3}}
    with pytest.raises(CheckpointError, match=r"missing keys: image_encoder\.blocks\.2\."):
        load_model(path, wrong)
