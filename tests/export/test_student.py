"""The student encoder: the decoder's grid at a fraction of LiteMedSAM's cost; its shipped weights load strictly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sammed_edge.export.models import CheckpointError, build_model, checkpoints, load_model
from sammed_edge.export.models.checkpoints import PROMPT_DECODER_PREFIXES, STUDENT, fetch_student


def _flops(model: torch.nn.Module, side: int) -> int:
    # imported here, not at collection: it imports triton, whose interpreter mode the kernel tests' conftest sets first
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, side, side))
    return counter.get_total_flops()


def test_student_gives_the_teachers_grid_for_a_fifth_of_the_flops():
    student, teacher = build_model("student"), build_model("lite_medsam")
    assert student.processing_policy() == teacher.processing_policy()
    assert student.prompt_encoder.image_embedding_size == teacher.prompt_encoder.image_embedding_size == (64, 64)
    with torch.no_grad():
        assert student.image_encoder(torch.zeros(1, 3, 256, 256)).shape == (1, 256, 64, 64)
    ratio = _flops(teacher.image_encoder, 256) / _flops(student.image_encoder, 256)
    assert ratio > 5.0, ratio


def test_fetch_refuses_foreign_or_encoderless_files(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"neck.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a student checkpoint"):
        fetch_student(tmp_path, weights=foreign)
    decoder_only = tmp_path / "decoder.safetensors"
    save_file({"mask_decoder.iou_token.weight": torch.zeros(1, 256)}, str(decoder_only))
    with pytest.raises(CheckpointError, match="not a student checkpoint"):
        fetch_student(tmp_path, weights=decoder_only)
    with pytest.raises(CheckpointError, match="missing"):
        fetch_student(tmp_path, weights=tmp_path / "absent.safetensors")


def test_shipped_student_is_small_float16_encoder_weights():
    assert STUDENT.is_file(), f"{STUDENT} must ship with the package"
    assert STUDENT.stat().st_size <= 25 * 2**20
    weights = load_file(str(STUDENT))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model("student").state_dict().items() if k.startswith("image_encoder.")}
    assert {k: tuple(v.shape) for k, v in weights.items() if k.startswith("image_encoder.")} == expected
    assert all(k.startswith(("image_encoder.",) + PROMPT_DECODER_PREFIXES) for k in weights)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    assert all(torch.isfinite(v.float()).all() for v in weights.values() if v.is_floating_point())
    with safe_open(str(STUDENT), "pt") as handle:
        assert "settings" in handle.metadata()
    assert "sammed_edge.export.train.distill" in (STUDENT.parent / "README.md").read_text()


def test_registry_loads_the_student_strictly(lite_medsam_model, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoints.CACHE_ENV, str(tmp_path))
    (tmp_path / "lite_medsam.pth").symlink_to(lite_medsam_model.checkpoint_path)
    model = load_model("student")
    assert type(model.image_encoder).__name__ == "StudentEncoder" and model.family == "lite_medsam"
    clicks = load_model("lite_medsam_clicks")
    shipped = load_file(str(STUDENT))
    for key, value in model.state_dict().items():
        if key in shipped:
            assert torch.equal(value, shipped[key].to(value.dtype)), key
        else:
            assert key.startswith(PROMPT_DECODER_PREFIXES) and torch.equal(value, clicks.state_dict()[key]), key
    assert load_model("student").checkpoint_path == model.checkpoint_path  # merged once, then cached


def test_student_graphs_export_verify_and_meet_tensorrt_constraints(tmp_path):
    from sammed_edge.export import trt_build
    from sammed_edge.export.bundler import TARGETS, BuildOptions, build_bundle
    from sammed_edge.runtime.bundle import load_bundle
    from sammed_edge.runtime.samples import phantom

    torch.manual_seed(0)
    model = build_model("student", img_size=64, embed_dims=[8, 16, 16, 16], depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                        window_sizes=[2, 2, 4, 2], neck_out=16)
    images = [phantom(90, seed=1)[0], phantom(120, seed=2)[0]]
    result = build_bundle(model, TARGETS["onnx-fp32"], tmp_path / "bundle", images, model_name="tiny-student", checkpoint=None,
                          options=BuildOptions(fuse=False))
    bundle = load_bundle(result.path)
    assert bundle.manifest["verification"]["passed"]
    for graph in ("encoder", "decoder"):
        report = trt_build.check_tensorrt_compat(bundle.path(graph), bundle.contract(graph))
        assert report["problems"] == [], report
