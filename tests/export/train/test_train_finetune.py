"""The fine-tuning stage on a tiny random model: a step learns, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sammed_edge.export.train import finetune as ft
from sammed_edge.export.train.data import load_mask_set, split_by_source
from sammed_edge.runtime.io import read_dataset

TINY = ft.Settings(batch_size=4, iterations=2, lr=1e-3, val_clicks=3)


def _run(data, out, model, epochs, cache, **kwargs):
    settings = kwargs.pop("settings", TINY)
    return ft.finetune(data, out, model=model, epochs=epochs, settings=settings, cache_dir=cache, device="cpu",
                       progress=False, **kwargs)


def test_a_training_step_lowers_the_loss(tiny_lite, tiny_dataset):
    policy = tiny_lite.processing_policy()
    masks = load_mask_set(read_dataset(tiny_dataset)[:4], policy, progress=False)
    params = ft.set_trainable(tiny_lite, ("mask_decoder", "prompt_encoder"))
    optimizer = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        embeddings = tiny_lite.encode(torch.randn(1, 3, 64, 64)).expand(4, -1, -1, -1).contiguous()
    box_only = dataclasses.replace(TINY, box_prob=1.0, iterations=0)  # one pass, one step

    def loss(optimizer=None):
        rng = np.random.default_rng(0)  # the same jittered boxes every time
        return ft.train_batch(tiny_lite, lambda grad: embeddings, masks.masks, masks.regions, box_only, rng, optimizer,
                              torch.device("cpu"))["loss"]

    before = loss()
    loss(optimizer)
    after = loss()
    assert after < before
    frozen = dict(tiny_lite.image_encoder.named_parameters())
    assert all(not p.requires_grad for p in frozen.values())


def test_resume_reproduces_the_uninterrupted_run(make_lite, tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    straight = _run(tiny_dataset, tmp_path / "straight", make_lite(), 2, cache)
    _run(tiny_dataset, tmp_path / "split", make_lite(), 1, cache)
    first = torch.load(tmp_path / "split" / ft.CHECKPOINT, weights_only=True)
    assert first["epoch"] == 1
    resumed = _run(tiny_dataset, tmp_path / "split", make_lite(), 2, cache, resume=True)
    a = torch.load(tmp_path / "straight" / ft.CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "split" / ft.CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"] > first["step"]
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    for index, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(state["exp_avg"], b["optimizer"]["state"][index]["exp_avg"], rtol=0, atol=0)
    assert a["rng"]["numpy"] == b["rng"]["numpy"]
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in a["history"]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in b["history"]]
    weights_a, weights_b = load_file(str(straight)), load_file(str(resumed))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_outputs_and_weights_hold_only_the_trained_parts(make_lite, tiny_dataset, tmp_path):
    out = tmp_path / "run"
    path = _run(tiny_dataset, out, make_lite(), 1, tmp_path / "cache")
    weights = load_file(str(path))
    assert weights and all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in weights)
    expected = {k for k in make_lite().state_dict() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    assert set(weights) == expected
    assert all(v.dtype == torch.float16 for v in weights.values())
    rows = list(csv.DictReader((out / ft.METRICS).open()))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert rows[0]["train_loss"] == "" and float(rows[1]["train_loss"]) > 0
    assert sum(int(row["selected"]) for row in rows) == 1
    assert (out / "split.json").is_file()
    with pytest.raises(ValueError, match="settings differ"):
        _run(tiny_dataset, out, make_lite(), 2, tmp_path / "cache", resume=True,
             settings=dataclasses.replace(TINY, lr=5e-4))


def test_encoder_in_the_loop(make_lite, tiny_dataset, tmp_path):
    model = make_lite()
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    settings = dataclasses.replace(TINY, trainable=("decoder", "encoder"), iterations=1, limit_train=4, limit_val=2)
    with pytest.raises(ValueError, match="online"):
        _run(tiny_dataset, tmp_path / "cached", make_lite(), 1, tmp_path / "cache", settings=settings, embeddings="cache")
    path = _run(tiny_dataset, tmp_path / "online", model, 1, None, settings=settings)
    assert any(not torch.equal(before[k], v) for k, v in model.image_encoder.state_dict().items())
    assert any(k.startswith("image_encoder.") for k in load_file(str(path)))
    with pytest.raises(ValueError, match="adapters"):
        ft.set_trainable(make_lite(), ("adapters",))


def test_trainable_names():
    assert ft.trainable_parts(["decoder", "prompt_encoder"]) == ("mask_decoder", "prompt_encoder")
    assert ft.trainable_parts(["adapters", "encoder"]) == ("image_encoder",)
    with pytest.raises(ValueError):
        ft.trainable_parts(["head"])


def test_bfloat16_passes_keep_float32_weights(tiny_lite, tiny_dataset):
    masks = load_mask_set(read_dataset(tiny_dataset)[:4], tiny_lite.processing_policy(), progress=False)
    params = ft.set_trainable(tiny_lite, ("mask_decoder", "prompt_encoder"))
    optimizer = torch.optim.Adam(params, lr=1e-3)
    with torch.no_grad():
        embeddings = tiny_lite.encode(torch.randn(1, 3, 64, 64)).expand(4, -1, -1, -1).contiguous()
    stats = ft.train_batch(tiny_lite, lambda grad: embeddings, masks.masks, masks.regions, dataclasses.replace(TINY, bf16=True),
                           np.random.default_rng(0), optimizer, torch.device("cpu"))
    assert np.isfinite(stats["loss"]) and stats["passes"] == TINY.iterations + 1
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)


def test_evaluator_on_the_validation_sources(tiny_lite, tiny_dataset, tmp_path, capsys):
    result = ft.evaluate_validation(tiny_lite, tiny_dataset, tmp_path / "report", num_clicks=2, progress=False, label="tiny")
    held = {item.source for item in split_by_source(read_dataset(tiny_dataset))[1]}
    assert {record["source"] for record in result["items"]} == held
    assert result["summary"]["count"]["evaluated"] == 8
    assert len(result["summary"]["overall"]["clicks"]["dice"]) == 2
    assert (tmp_path / "report" / "evaluation.json").is_file()
    assert "box" in capsys.readouterr().out


def test_views_encoder_tail_and_schedule_resume_exactly(make_lite, tiny_dataset, tmp_path):
    """The recipe's levers together (augmented views, the encoder's last stage and neck trained on cached
    features, cosine schedule, loose/tight boxes, clicks anywhere): trains the tail, resumes bit for bit."""
    settings = dataclasses.replace(TINY, views=2, trainable=("decoder", "prompt_encoder", "encoder_tail"), tail_split=3,
                                   schedule="cosine", schedule_epochs=2, warmup=0.2, tight_box_prob=0.3, loose_box_prob=0.3,
                                   anywhere_prob=0.5, val_per_source=2, bf16=True)
    cache = tmp_path / "cache"
    model = make_lite()
    early = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    straight = _run(tiny_dataset, tmp_path / "straight", model, 2, cache, settings=settings)
    changed = {k for k, v in model.image_encoder.state_dict().items() if not torch.equal(early[k], v)}
    assert changed and all(k.startswith(("layers.3.", "neck.")) for k in changed)
    weights = load_file(str(straight))
    assert any(k.startswith("image_encoder.layers.3.") for k in weights) and any(k.startswith("image_encoder.neck.") for k in weights)
    assert not any(k.startswith("image_encoder.layers.2.") for k in weights)
    split = json.loads((tmp_path / "straight" / "split.json").read_text())
    assert split["train_view_masks"] > 0 and split["validation_per_source"] == 2
    assert split["validation_masks"] == 2 * len(split["validation_sources"])
    _run(tiny_dataset, tmp_path / "split", make_lite(), 1, cache, settings=settings)
    resumed = _run(tiny_dataset, tmp_path / "split", make_lite(), 2, cache, settings=settings, resume=True)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((tmp_path / "straight" / ft.METRICS).open()))
    assert float(rows[2]["lr"]) < float(rows[1]["lr"]) < settings.lr  # cosine decay


def test_learning_rate_schedule():
    cosine = dataclasses.replace(TINY, schedule="cosine", warmup=0.1)
    scales = [ft.learning_rate_scale(cosine, step, 100) for step in range(100)]
    assert scales[0] == pytest.approx(0.1) and max(scales) == pytest.approx(1.0, abs=0.01)
    assert scales[-1] < 0.02 and all(a >= b for a, b in zip(scales[10:], scales[11:]))
    assert ft.learning_rate_scale(TINY, 50, 100) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        ft.finetune("nowhere", "nowhere", model="custom-model-not-loaded", settings=dataclasses.replace(TINY, schedule="step"))
