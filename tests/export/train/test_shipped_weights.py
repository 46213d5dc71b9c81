"""The shipped click-trained weights: their format, and the registry model that loads them strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sammed_edge.export.models import CheckpointError, build_model, checkpoints, list_models, load_model
from sammed_edge.export.models.checkpoints import LITE_MEDSAM_CLICKS, PROMPT_DECODER_PREFIXES, fetch_lite_medsam_clicks


def _decoder_keys() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        state = build_model("lite_medsam").state_dict()
    return {key: tuple(value.shape) for key, value in state.items() if key.startswith(PROMPT_DECODER_PREFIXES)}


def test_shipped_file_is_small_float16_prompt_encoder_and_decoder():
    assert LITE_MEDSAM_CLICKS.is_file(), f"{LITE_MEDSAM_CLICKS} must ship with the package"
    assert LITE_MEDSAM_CLICKS.stat().st_size <= 25 * 2**20
    weights = load_file(str(LITE_MEDSAM_CLICKS))
    assert {key: tuple(value.shape) for key, value in weights.items()} == _decoder_keys()
    assert {value.dtype for value in weights.values()} == {torch.float16}
    assert all(torch.isfinite(value.float()).all() for value in weights.values())
    with safe_open(str(LITE_MEDSAM_CLICKS), "pt") as handle:
        assert "settings" in handle.metadata()
    readme = (LITE_MEDSAM_CLICKS.parent / "README.md").read_text()
    assert "sammed_edge.export.train.finetune" in readme


def test_registered_with_the_lite_medsam_architecture():
    assert "lite_medsam_clicks" in list_models() and "lite_medsam" in list_models()


def test_merge_refuses_foreign_weights(lite_medsam_model, tmp_path):
    bad = tmp_path / "bad.safetensors"
    save_file({"mask_decoder.iou_token.weight": torch.zeros(1, 8)}, str(bad))
    (tmp_path / "lite_medsam.pth").symlink_to(lite_medsam_model.checkpoint_path)
    with pytest.raises(CheckpointError, match="not LiteMedSAM's prompt encoder"):
        fetch_lite_medsam_clicks(tmp_path, weights=bad)
    assert not list(tmp_path.glob("lite_medsam_clicks-*"))


def test_registry_loads_the_shipped_weights_strictly(lite_medsam_model, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.CACHE_ENV, str(tmp_path))
    (tmp_path / "lite_medsam.pth").symlink_to(lite_medsam_model.checkpoint_path)
    model = load_model("lite_medsam_clicks")
    assert model.family == "lite_medsam" and model.checkpoint_path.startswith(str(tmp_path))
    ours, released = model.state_dict(), lite_medsam_model.state_dict()
    assert ours.keys() == released.keys()
    shipped = load_file(str(LITE_MEDSAM_CLICKS))
    for key, value in ours.items():
        if key.startswith(PROMPT_DECODER_PREFIXES):
            assert torch.equal(value, shipped[key].float()), key
        else:
            assert torch.equal(value, released[key]), key  # the encoder is the released one
    assert load_model("lite_medsam_clicks").checkpoint_path == model.checkpoint_path  # merged once, then cached
    assert not np.array_equal(ours["mask_decoder.iou_token.weight"].numpy(), released["mask_decoder.iou_token.weight"].numpy())
