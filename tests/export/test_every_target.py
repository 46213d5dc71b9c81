"""Every CPU build target builds and verifies for a tiny instance of every registered architecture.

Each case runs the real build (`bundler.build_bundle`): the fp32 ONNX graphs in the forms and embedding layout the
target picks for that model are checked against PyTorch at fp32 tolerance, converted (quantized for int8),
checked again through the target's backend, then gated (reduced precision) or checked end to end through the
runtime `Predictor` (fp32). A graph form or layout that does not reproduce some architecture fails here.

Registered names built by the same configuration function (lite_medsam and lite_medsam_clicks: one architecture,
other weights) are one architecture and are built once. The targets that ask for the same fp32 forms share one
verified export through the build's export cache (the first of them exports and verifies it).
"""

from __future__ import annotations

import os

import pytest
import torch

from sammed_edge.export.bundler import TARGETS, BuildOptions, build_bundle
from sammed_edge.export.calibration import CalibrationSet
from sammed_edge.export.models import build_model, list_models
from sammed_edge.export.models.registry import MODELS
from sammed_edge.runtime.samples import phantom

CPU_TARGETS = ("onnx-fp32", "onnx-int8", "ov-fp32", "ov-int8", "ov-bf16")
_TINY_TINYVIT = dict(img_size=64, embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                     window_sizes=[7, 5, 6, 4], mlp_ratio=2.0, mbconv_expand_ratio=2.0, neck_out=32)
_TINY_VIT = dict(img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], window_size=2, out_chans=32)
# registered name -> the settings of its tiny instance (windows that pad their grids, and one that covers it)
TINY = {
    "lite_medsam": _TINY_TINYVIT,
    "lite_medsam_clicks": _TINY_TINYVIT,
    "sam_med2d_vit_b": _TINY_VIT,
    "sam_vit_b": _TINY_VIT,
    "student": dict(img_size=64, embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                    window_sizes=[2, 5, 4, 8], mlp_ratio=2.0, mbconv_expand_ratio=2.0, neck_out=32),
}
# one registered name per architecture (configuration function): the first of its names
ARCHITECTURES = sorted({MODELS[name].config: name for name in sorted(TINY, reverse=True)}.values())
# a reduced-precision embedding of a random tiny model lies this far from PyTorch's at most (relative to its
# largest value); a graph that computes something else lies much farther
REDUCED_EMBEDDING_ERROR = 0.5


def tiny(name: str):
    """The tiny random instance of a registered model, every parameter perturbed so that zero-initialised tables
    (the student's skip, bias tables) do not hide wiring mistakes."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(name, **TINY[name])
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn(param.shape))
    return model


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """PyTorch on one thread: tiny models gain nothing from two, and their threads' handoffs cost more than their
    work on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_registered_model_and_cpu_target_is_covered():
    assert sorted(TINY) == list_models(), "give every registered model a tiny instance in TINY"
    assert sorted(CPU_TARGETS) == sorted(name for name, target in TARGETS.items() if target.artifact != "tensorrt")


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("export-cache")


@pytest.mark.parametrize("target", CPU_TARGETS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_target_builds_and_verifies(name, target, tmp_path, export_cache):
    missing = TARGETS[target].missing()
    if missing:  # CI installs every CPU toolkit: there a missing one is a failure, not a skip
        (pytest.fail if os.environ.get("CI", "").lower() == "true" else pytest.skip)(f"{target} needs {', '.join(missing)}")
    model = tiny(name)
    images = [phantom(90, seed=1)[0], phantom(120, seed=2)[0]]
    calibration = CalibrationSet([phantom(80 + 8 * i, seed=10 + i)[0] for i in range(4)], [],
                                 [phantom(100 + 8 * i, seed=20 + i)[0] for i in range(3)], source="synthetic phantoms")
    # the gate's Dice drop of a random tiny model says nothing of real weights: recorded, not enforced
    result = build_bundle(model, TARGETS[target], tmp_path / "bundle", images, model_name=name, checkpoint=None,
                          options=BuildOptions(verify_images=len(images), gate=False, export_cache=export_cache),
                          calibration=calibration)
    manifest = result.manifest
    check = manifest["verification"]
    assert check["onnx_fp32"]["encoder"]["embedding_max_abs"] <= 1e-4 + 1e-4 * check["onnx_fp32"]["encoder"]["embedding_max_abs_scale"]
    encoder = manifest["graphs"]["encoder"]
    tinyvit = MODELS[name].config()["image_encoder"]["type"] in ("tiny_vit", "student")
    assert encoder["form"] == (TARGETS[target].encoder_form if tinyvit else "model")
    if encoder["embedding_layout"] == "tokens":
        assert encoder["tokens_step"] == ("transpose" if name == "student" else "neck_norm")
    if TARGETS[target].reduced:
        assert "gate" in check
        report = check["encoder"]
        assert report["embedding_max_abs"] <= REDUCED_EMBEDDING_ERROR * report["embedding_max_abs_scale"], report
    else:
        assert check["predictor"]["min_mask_agreement"] >= 0.999

