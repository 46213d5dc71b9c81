"""The build's fp32 stage: a verified export is reused only under the same key, and a miss exports afresh."""

from __future__ import annotations

import copy

import torch

from sammed_edge.export import fp32_stage, graphs
from sammed_edge.runtime.samples import phantom

SETTINGS = {"exporter": "torchscript", "opset": 17, "slim": True, "encoder_form": "model", "decoder_form": "factored",
            "decoder_softmax": "inside", "embedding_layout": "nchw"}


def _steps():
    names: list[str] = []

    def step(name):
        names.append(name)
        return lambda: None

    return names, step


def test_key_follows_weights_settings_images_and_tolerance(tiny_model):
    images = [phantom(80, seed=1)[0]]
    key = fp32_stage.export_key(tiny_model, images, SETTINGS, graphs.FP32)
    assert key == fp32_stage.export_key(tiny_model, [image.copy() for image in images], dict(SETTINGS), dict(graphs.FP32))
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other.mask_decoder.parameters()).view(-1)[0] += 1e-3
    changed = [
        fp32_stage.export_key(other, images, SETTINGS, graphs.FP32),
        fp32_stage.export_key(tiny_model, images, {**SETTINGS, "embedding_layout": "tokens"}, graphs.FP32),
        fp32_stage.export_key(tiny_model, [phantom(80, seed=2)[0]], SETTINGS, graphs.FP32),
        fp32_stage.export_key(tiny_model, images, SETTINGS, {**graphs.FP32, "decoder": graphs.Tolerance(1e-3, 1e-3)}),
    ]
    assert len({key, *changed}) == 5


def test_second_export_comes_from_the_cache(tiny_model, tmp_path):
    images = [phantom(80, seed=1)[0]]
    cache = tmp_path / "cache"
    names, step = _steps()
    (tmp_path / "a").mkdir()
    first = fp32_stage.verified_fp32_graphs(tiny_model, tmp_path / "a", images, SETTINGS, graphs.FP32, step, cache)
    assert first["cache"]["hit"] is False and "export encoder" in names
    names.clear()
    (tmp_path / "b").mkdir()
    second = fp32_stage.verified_fp32_graphs(tiny_model, tmp_path / "b", images, SETTINGS, graphs.FP32, step, cache)
    assert second["cache"] == {"key": first["cache"]["key"], "hit": True} and names == ["fp32 graphs from the export cache"]
    assert second["exported"] == first["exported"] and second["onnx_fp32"] == first["onnx_fp32"]
    for name in fp32_stage.GRAPHS:
        assert (tmp_path / "a" / f"{name}.onnx").read_bytes() == (tmp_path / "b" / f"{name}.onnx").read_bytes()
    # the cached graphs still verify against the model
    graphs.verify_decoder(tiny_model, tmp_path / "b" / "decoder.onnx", images)
    assert [p.name for p in cache.iterdir()] == [first["cache"]["key"]], "no staging folder is left behind"
