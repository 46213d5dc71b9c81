"""The token form of the TinyViT encoder computes what the model computes, exports, and removes OpenVINO's
layout transposes; the build picks it for the OpenVINO targets only where the encoder is TinyViT."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from sammed_edge.export import graphs
from sammed_edge.export.bundler import TARGETS, BuildOptions, encoder_form
from sammed_edge.export.models import build_model
from sammed_edge.export.models.tiny_vit import WindowAttention
from sammed_edge.export.token_encoder import TokenWindowAttention, has_token_form, token_encoder
from sammed_edge.runtime import processing
from sammed_edge.runtime.samples import phantom

# windows that pad every grid (32, 16, 16 tokens a side), and windows that cover whole grids (no partition)
TINY_LITE = dict(embed_dims=[16, 32, 48, 64], depths=[1, 2, 2, 1], num_heads=[2, 2, 3, 4], window_sizes=[7, 5, 6, 4],
                 mlp_ratio=2.0, mbconv_expand_ratio=2.0, img_size=64, neck_out=32)
WHOLE_GRID_WINDOWS = [7, 32, 16, 16]
TINY_STUDENT = dict(img_size=64, embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
                    window_sizes=[2, 5, 4, 8], neck_out=16)
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO not installed")


def _tiny(name: str, **overrides):
    """A small random model, every parameter perturbed so that zero-initialised tables do not hide wiring mistakes."""
    generator = torch.Generator().manual_seed(7)
    model = build_model(name, **overrides)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def _images(count: int = 2) -> list[np.ndarray]:
    return [phantom(90 + 30 * i, seed=i)[0] for i in range(count)]


def test_gathered_projections_are_the_rows_of_qkv():
    attn = WindowAttention(12, 3, 2)
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.arange(36.0)[:, None].expand(36, 12))
        attn.qkv.bias.copy_(torch.arange(36.0))
    form = TokenWindowAttention(attn)
    # per head [q | k | v], 4 channels each: head 1's k rows are 16..19
    assert form.k.bias[4:8].tolist() == [16.0, 17.0, 18.0, 19.0]
    assert form.q.bias.tolist() == [0, 1, 2, 3, 12, 13, 14, 15, 24, 25, 26, 27]
    assert form.v.weight[:, 0].tolist() == [8, 9, 10, 11, 20, 21, 22, 23, 32, 33, 34, 35]


@pytest.mark.parametrize("name, overrides", [("lite_medsam", TINY_LITE),
                                             ("lite_medsam", {**TINY_LITE, "window_sizes": WHOLE_GRID_WINDOWS}),
                                             ("student", TINY_STUDENT)],
                         ids=["padded-windows", "whole-grid-windows", "student"])
def test_same_outputs(name, overrides):
    model = _tiny(name, **overrides)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.image_encoder(x)
        got = token_encoder(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_model_is_left_unchanged():
    model = _tiny("lite_medsam", **TINY_LITE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    token_encoder(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, WindowAttention) for m in model.image_encoder.modules())


@pytest.mark.parametrize("layout", graphs.EMBEDDING_LAYOUTS)
def test_exported_token_form_verifies_in_onnxruntime(lite_medsam_model, tmp_path, layout):
    path = graphs.export_encoder(lite_medsam_model, tmp_path / "encoder.onnx", form="tokens", layout=layout)
    graphs.slim(path)
    report = graphs.verify_encoder(lite_medsam_model, path, _images(), layout=layout)
    assert report["images"] == 2, report


def test_tokens_layout_ends_with_the_neck_norm_over_channels(lite_medsam_model, tmp_path):
    """In the tokens layout the neck's last LayerNorm runs on 1 x N x C tokens: the switch to tokens comes right
    after the neck's last convolution (which OpenVINO folds into the convolution's own channels-last layout), not
    as a transpose of the normalised output."""
    import onnx

    path = graphs.export_encoder(lite_medsam_model, tmp_path / "encoder.onnx", form="tokens", layout="tokens")
    graphs.slim(path)
    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    last = producer[model.graph.output[0].name]
    ops = []
    while last is not None and len(ops) < 4:
        ops.append(last.op_type)
        last = producer.get(last.input[0])
    assert ops == ["LayerNormalization", "Reshape", "Transpose", "Conv"], ops
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [1, 64 * 64, 256]


def test_vit_has_no_token_form(tiny_model, tmp_path):
    assert not has_token_form(tiny_model)
    with pytest.raises(ValueError, match="needs a TinyViT encoder"):
        token_encoder(tiny_model)
    with pytest.raises(ValueError, match="unknown encoder form 'fast'"):
        graphs.export_encoder(tiny_model, tmp_path / "x.onnx", form="fast")


def test_form_follows_target_and_model(tiny_model):
    lite = _tiny("lite_medsam", **TINY_LITE)
    auto = BuildOptions()
    assert encoder_form(lite, TARGETS["ov-int8"], auto) == "tokens"
    assert encoder_form(lite, TARGETS["ov-fp32"], auto) == encoder_form(lite, TARGETS["ov-bf16"], auto) == "tokens"
    assert encoder_form(lite, TARGETS["onnx-fp32"], auto) == encoder_form(lite, TARGETS["onnx-int8"], auto) == "model"
    assert encoder_form(tiny_model, TARGETS["ov-int8"], auto) == "model"  # a ViT has no token form
    assert encoder_form(lite, TARGETS["onnx-fp32"], BuildOptions(encoder_form="tokens")) == "tokens"
    assert encoder_form(lite, TARGETS["ov-int8"], BuildOptions(encoder_form="model")) == "model"
    requested = encoder_form(tiny_model, TARGETS["ov-int8"], BuildOptions(encoder_form="tokens"))
    with pytest.raises(ValueError, match="needs a TinyViT encoder"):  # refused where the graph is made
        graphs.EncoderGraph(tiny_model, requested)


def _executed(xml, precision: str) -> Counter:
    import openvino as ov

    from sammed_edge.export.studies.compare_encoder_forms import executed_layers

    core = ov.Core()
    return executed_layers(core.compile_model(core.read_model(str(xml)), "CPU", {"INFERENCE_PRECISION_HINT": precision}))


@needs_openvino
def test_openvino_runs_fewer_transposes(lite_medsam_model, tmp_path):
    """The point of the form: OpenVINO folds its layout switches into reorders and its head transposes into the
    attention kernel, so fewer Transpose layers execute (structure, not timing: docs/exporters.md has the times)."""
    from sammed_edge.export.quantize import convert_openvino

    counts = {}
    for form in graphs.ENCODER_FORMS:
        onnx_path = graphs.export_encoder(lite_medsam_model, tmp_path / f"{form}.onnx", form=form)
        graphs.slim(onnx_path)
        convert_openvino(onnx_path, tmp_path / f"{form}.xml")
        counts[form] = _executed(tmp_path / f"{form}.xml", "f32")
    assert counts["tokens"]["Transpose"] < counts["model"]["Transpose"] / 2, counts
    assert counts["tokens"]["FullyConnected"] > counts["model"]["FullyConnected"]  # q, k, v as three products


@needs_openvino
def test_ov_int8_build_writes_the_token_form(tmp_path):
    from sammed_edge.export.bundler import build_bundle
    from sammed_edge.export.calibration import calibration_set
    from sammed_edge.runtime.bundle import load_bundle

    model = _tiny("lite_medsam", **TINY_LITE)
    calib = calibration_set(None, calibration=4, holdout=6)
    options = BuildOptions(box_budget=100.0, point_budget=100.0, click_budget=100.0)  # a random model: the gate's numbers mean nothing
    result = build_bundle(model, TARGETS["ov-int8"], tmp_path / "b", _images(), "tiny-lite", None, options, calib)
    manifest = load_bundle(result.path).manifest
    assert manifest["graphs"]["encoder"]["form"] == "tokens"
    assert manifest["provenance"]["exporter"]["encoder_form"] == "auto"
    assert manifest["graphs"]["encoder"]["quantization"]["preset"] == "mixed"  # asymmetric activations
    assert manifest["verification"]["onnx_fp32"]["encoder"]["images"] == 2


@needs_openvino
def test_compare_tool_reports_both_forms():
    from sammed_edge.export.studies.compare_encoder_forms import compare, markdown

    rows = compare(_tiny("lite_medsam", **TINY_LITE), rounds=2, threads=1, calib_images=2, targets=("ov-int8", "ov-fp32"))
    assert [(row["target"], row["form"]) for row in rows] == [(t, f) for t in ("ov-int8", "ov-fp32") for f in graphs.ENCODER_FORMS]
    model_int8, tokens_int8, model_fp32, tokens_fp32 = rows
    assert model_int8["ratio"] == model_fp32["ratio"] == 1.0 and all(row["median_ms"] > 0 for row in rows)
    assert tokens_int8["transposes"] < model_int8["transposes"] and tokens_fp32["transposes"] < model_fp32["transposes"], rows
    assert model_fp32["attention_fused"] and not model_int8["attention_fused"]  # int8 graphs are quantized unfused
    assert model_fp32["max_relative_error_vs_fp32"] < 1e-4 and tokens_fp32["max_relative_error_vs_fp32"] < 1e-4
    assert "| ov-int8 | tokens | unfused |" in markdown(rows, "python -m ...", "tiny", 1, 2)


@needs_openvino
def test_nncf_quantizes_the_depthwise_convolutions(tmp_path):
    """Every depthwise convolution NNCF quantizes gets int8 weights in the IR (no FakeQuantize left on float weights,
    which OpenVINO folds back to float and then runs the convolution in bf16 / fp32), and the MBConv ones run int8."""
    import openvino as ov

    from sammed_edge.export.calibration import calibration_set
    from sammed_edge.export.quantize import quantize_openvino

    model = _tiny("lite_medsam", **TINY_LITE)
    onnx_path = graphs.export_encoder(model, tmp_path / "encoder.onnx", form="tokens")
    policy = model.processing_policy()
    tensors = [processing.preprocess_image(image, policy)[0] for image in calibration_set(None, 4, 0).images]
    report = quantize_openvino(onnx_path, tmp_path / "int8.xml", tensors)
    quantized = ov.Core().read_model(str(tmp_path / "int8.xml"))
    convolutions = [op for op in quantized.get_ops() if op.get_type_name() == "GroupConvolution"]
    weights = [op.input_value(1).get_node() for op in convolutions]
    assert convolutions and not [w.get_friendly_name() for w in weights if w.get_type_name() == "FakeQuantize"]
    int8_weights = [w for w in weights if w.get_type_name() == "Multiply"]  # int8 Constant -> Convert -> scale
    assert int8_weights, [w.get_type_name() for w in weights]
    compiled = ov.Core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    executed = {op.get_friendly_name(): op.get_rt_info()["primitiveType"].astype(str)
                for op in compiled.get_runtime_model().get_ordered_ops()}
    mbconv = [kind for name, kind in executed.items() if "layers.0/blocks" in name and "conv2/c/Conv" in name]
    assert mbconv and all("i8" in kind.lower() for kind in mbconv), mbconv

    # their inputs are signed symmetric (zero point 0), which OpenVINO's brgconv depthwise int8 kernel needs
    inputs = [op.input_value(0).get_node() for op in convolutions]
    quantized_inputs = [q for q in inputs if q.get_type_name() == "FakeQuantize"]
    assert report["symmetric_depthwise_inputs"] == len(quantized_inputs) > 0
    for quantizer in quantized_inputs:
        low, high = (quantizer.input_value(i).get_node().get_data() for i in (1, 2))
        np.testing.assert_allclose(low, -high * 128 / 127, rtol=1e-6)
        assert (high > 0).all()
    if any("avx512" in kind for kind in mbconv):
        assert all("brgconv" in kind and "dw" in kind for kind in mbconv), mbconv
