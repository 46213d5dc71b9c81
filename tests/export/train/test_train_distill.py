"""Distillation on tiny models: the student learns the teacher's embeddings, a resumed run equals an uninterrupted
one, the pool leaves validation sources out; the chain's stages are cached by content."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sammed_edge.export import build as build_cli
from sammed_edge.export import pipeline
from sammed_edge.export.models import build_model, load_model
from sammed_edge.export.models.student import init_from_teacher, spread
from sammed_edge.export.train import distill as ds

# The student of the tiny LiteMedSAM: same widths (so it starts from the teacher), 64 px input, 16 x 16 grid.
TINY_STUDENT = dict(img_size=64, embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                    window_sizes=[2, 2, 4, 2], neck_out=16)
TINY = ds.DistillSettings(teacher="custom", student="student", student_overrides=TINY_STUDENT, epochs=2, batch_size=4,
                          lr=2e-3, pool_limit=None, val_clicks=2)


def _run(data, out, teacher, cache, settings=TINY, **kwargs):
    return ds.distill(data, out, settings=settings, teacher=teacher, cache_dir=cache, device="cpu", progress=False, **kwargs)


def test_student_starts_from_the_teacher(tiny_lite):
    student = build_model("student", **TINY_STUDENT).image_encoder
    init_from_teacher(student, tiny_lite.image_encoder)
    teacher = tiny_lite.image_encoder
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        pooled = torch.nn.functional.avg_pool2d(image, 2)
        torch.testing.assert_close(student.stem(image), teacher.patch_embed(pooled), rtol=1e-5, atol=1e-5)
    block = teacher.layers[2].blocks[spread(1, len(teacher.layers[2].blocks))[0]]
    torch.testing.assert_close(student.stage2.blocks[0].attn.qkv.weight, block.attn.qkv.weight)
    assert student.stage2.blocks[0].attn.attention_biases.shape == (1, 16)  # table resampled to the 4 x 4 window
    assert not student.skip.weight.any() and not student.skip.bias.any()
    assert spread(3, 6) == [1, 3, 5] and spread(1, 2) == [1]
    with pytest.raises(ValueError):
        spread(3, 2)


def test_pool_leaves_out_validation_sources(tmp_path):
    rows = [("a.png", "BUSI breast ultrasound (x)"), ("b.png", "HC18 fetal head"), ("c.png", "busi other copy"),
            ("d.png", "Kvasir-SEG"), ("e.png", "HC18 fetal head")]
    with (tmp_path / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "modality", "source_dataset"])
        writer.writerows((name, "US", source) for name, source in rows)
    kept = ds.pool_images(tmp_path, ["BUSI breast ultrasound (Al-Dhabyani et al.)"], None, 0)
    assert [p.name for p in kept] == ["b.png", "d.png", "e.png"]
    two = ds.pool_images(tmp_path, ["BUSI"], 2, 0)
    assert len(two) == 2 and two == ds.pool_images(tmp_path, ["BUSI"], 2, 0) and set(two) <= set(kept)
    assert ds.pool_images(None, [], None, 0) == []


def test_gamma_keeps_the_input_range_and_padding():
    images = torch.rand(6, 3, 8, 8)
    images[:, :, 4:] = 0.0
    out = ds.gamma_augment(images, np.random.default_rng(0), 1.0, 0.7, 1.4)
    assert out.min() >= 0 and out.max() <= 1 and not out[:, :, 4:].any()
    assert not torch.allclose(out, images)
    assert torch.equal(ds.gamma_augment(images, np.random.default_rng(0), 0.0, 0.7, 1.4), images)


def test_distillation_lowers_the_embedding_error(make_lite, tiny_dataset, tmp_path):
    cache = tmp_path / "cache"
    weights = _run(tiny_dataset, tmp_path / "run", make_lite(), cache, settings=dataclasses.replace(TINY, epochs=8))
    history = torch.load(tmp_path / "run" / ds.CHECKPOINT, weights_only=True)["history"]
    assert [row["epoch"] for row in history] == list(range(9))
    assert history[-1]["train_mse"] < history[1]["train_mse"] and history[-1]["val_mse"] < history[0]["val_mse"], history
    stored = load_file(str(weights))
    assert stored and all(k.startswith("image_encoder.") for k in stored)
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    rows = list(csv.DictReader((tmp_path / "run" / ds.METRICS).open()))
    assert len(rows) == 9 and sum(int(r["selected"]) for r in rows) == 1
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["train_images"] == 6 and split["pool_images"] == 0  # the held-out sources' 4 images are not trained on
    with pytest.raises(ValueError, match="settings differ"):
        _run(tiny_dataset, tmp_path / "run", make_lite(), cache, settings=dataclasses.replace(TINY, epochs=8, lr=1.0), resume=True)


def test_resume_after_an_interruption_matches(make_lite, tiny_dataset, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    _run(tiny_dataset, tmp_path / "straight", make_lite(), cache)
    original = ds.records.save_checkpoint
    calls = {"n": 0}

    def save_then_stop(path, payload):
        original(path, payload)
        calls["n"] += 1
        if payload["epoch"] == 1:
            raise KeyboardInterrupt  # the run dies right after epoch 1's checkpoint

    monkeypatch.setattr(ds.records, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dataset, tmp_path / "cut", make_lite(), cache)
    monkeypatch.setattr(ds.records, "save_checkpoint", original)
    _run(tiny_dataset, tmp_path / "cut", make_lite(), cache, resume=True)
    a = torch.load(tmp_path / "straight" / ds.CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "cut" / ds.CHECKPOINT, weights_only=True)
    assert a["step"] == b["step"]
    for key in a["encoder"]:
        torch.testing.assert_close(a["encoder"][key], b["encoder"][key], rtol=0, atol=0)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])


def test_chain_stages_are_cached_by_content(tiny_lite, tiny_dataset, tmp_path):
    # a checkpoint file does not tell a TinyViT's input size, which is then LiteMedSAM's 256: tiny widths at 256 px
    teacher_path = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    widths = {k: v for k, v in tiny_lite.config["image_encoder"].items() if k != "type"}
    teacher = build_model("lite_medsam", **{**widths, "img_size": 256})
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(teacher_path))
    options = pipeline.ChainOptions(teacher=str(teacher_path), finetune_data=[tiny_dataset], finetune_epochs=1, distill="student",
                                    student_overrides={**TINY_STUDENT, "img_size": 256}, distill_epochs=1, bf16=False,
                                    work=tmp_path / "work")
    stages = pipeline.plan(options)
    assert [s.name for s in stages] == ["finetune", "distill"] and [s.status() for s in stages] == ["run", "run"]
    outputs = [stage.execute() for stage in stages]
    student = load_model(outputs[-1])
    assert type(student.image_encoder).__name__ == "StudentEncoder"
    finetuned = load_model(outputs[0])
    torch.testing.assert_close(student.mask_decoder.state_dict(), finetuned.mask_decoder.state_dict())

    again = pipeline.plan(options)
    assert [s.status() for s in again] == ["cached", "cached"] and [s.execute() for s in again] == outputs
    changed = pipeline.plan(dataclasses.replace(options, finetune_epochs=2))
    assert [s.status() for s in changed] == ["run", "run"] and changed[0].key != stages[0].key
    text = pipeline.describe(again, "onnx-fp32", tmp_path / "bundle")
    assert "finetune  cached" in text and "distill   cached" in text and "3. export" in text


def test_dry_run_prints_the_plan_without_running(tmp_path, capsys, shared):
    data = shared("data", "medseg-dev")
    code = build_cli.main(["--target", "ov-int8", "--finetune-data", str(data), "--distill", "student", "--teacher", "lite_medsam",
                           "--work", str(tmp_path / "work"), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0 and "1. finetune  run" in text and "2. distill   run" in text and "unlabeled-pool" not in text
    assert "pool_sha256: None" not in text and "3. export    ov-int8 -> out/student-ov-int8" in text
    assert not (tmp_path / "work").exists()


def test_prompt_stage_trains_only_the_encoder_through_every_pass(make_lite, tiny_dataset, tmp_path):
    teacher = make_lite()
    student = ds.make_student(TINY, teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    best = {"encoder": {f"image_encoder.{k}": v.clone() for k, v in student.image_encoder.state_dict().items()}}
    weights = ds.prompt_stage(student, best, tiny_dataset, tmp_path / "prompts", TINY, 1, False, torch.device("cpu"), False)
    after = student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("image_encoder."))
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("image_encoder."))
    assert load_file(str(weights)) and all(k.startswith("image_encoder.") for k in load_file(str(weights)))


def test_one_command_runs_the_chain_then_skips_it(tiny_lite, tiny_dataset, tmp_path, capsys):
    teacher_path = tmp_path / "teacher.safetensors"
    widths = {k: v for k, v in tiny_lite.config["image_encoder"].items() if k != "type"}
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build_model("lite_medsam", **{**widths, "img_size": 256}).state_dict().items()},
              str(teacher_path))
    argv = ["--target", "onnx-fp32", "--teacher", str(teacher_path), "--finetune-data", str(tiny_dataset), "--finetune-epochs", "1",
            "--distill", "student", "--distill-epochs", "1", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "bundle"),
            "--verify-images", "2", "--no-fuse", "-q"]
    assert build_cli.main(argv + ["--dry-run"]) == 0
    assert "finetune  run" in capsys.readouterr().out and not (tmp_path / "bundle").exists()
    assert build_cli.main(argv) == 0
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "student" and manifest["model"]["config"]["image_encoder"]["type"] == "student"
    assert manifest["verification"]["passed"]
    capsys.readouterr()
    assert build_cli.main(argv + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "finetune  cached" in plan and "distill   cached" in plan
    assert build_cli.main(argv) == 0
    assert "is current" in capsys.readouterr().out
