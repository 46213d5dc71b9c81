"""Builders reproduce the official state-dict layouts key for key."""

from __future__ import annotations

import json

import pytest
import torch

from sammed_edge.export.models import build_model, infer_config, list_models

MANIFESTS = {
    "sam_med2d_vit_b": "sam_med2d_vit_b.state_dict_manifest.json",
    "lite_medsam": "lite_medsam.manifest.json",
}


def meta_model(name: str, **overrides):
    with torch.device("meta"):
        return build_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_state_dict_matches_manifest(name, shared):
    manifest = json.loads(shared("reference", MANIFESTS[name]).read_text())
    expected = {entry["key"]: tuple(entry["shape"]) for entry in manifest["keys"]}
    state = meta_model(name).state_dict()
    ours = {key: tuple(value.shape) for key, value in state.items()}
    assert sorted(set(expected) - set(ours)) == [], "keys missing from our model"
    assert sorted(set(ours) - set(expected)) == [], "keys our model has that the checkpoint lacks"
    assert {k: v for k, v in ours.items() if v != expected[k]} == {}
    assert len(ours) == manifest["num_state_dict_entries"]
    params = sum(p.numel() for p in meta_model(name).parameters())
    assert params == manifest["total_parameters"]


@pytest.mark.parametrize("name", list_models())
def test_inferred_config_equals_builder_config(name):
    model = meta_model(name)
    assert infer_config(model.state_dict()) == model.config


def test_sam_vit_b_is_sam_at_1024_without_adapters():
    model = meta_model("sam_vit_b")
    assert model.family == "sam" and model.image_size == 1024 and model.low_res_size == 256
    assert not any("Adapter" in key for key in model.state_dict())
    assert model.processing_policy().resize == "longest_side"
