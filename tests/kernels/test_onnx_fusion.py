"""Attention fusions on graphs exported from tiny random models: counts per form, outputs, idempotence, guards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sammed_edge.kernels.onnx import (
    ATTENTION,
    DISABLE_ENV,
    MHA,
    CrossAttentionFusion,
    FusionVerificationError,
    RelPosAttentionFusion,
    WindowAttentionFusion,
    count_fused,
    fuse_attention,
    fusion_guard,
    random_feeds,
    recommended,
    verify_fusion,
)

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "out" / "lite_medsam_clicks-onnx-fp32"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None

TINY_LITE_MEDSAM = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_heads=[2, 2, 3, 4], window_sizes=[7, 5, 6, 4],
                        img_size=64, neck_out=32)
TINY_SAM_MED2D = dict(embed_dim=128, depth=3, num_heads=4, global_attn_indexes=[1])

NONE = {"WindowAttentionFusion": 0, "RelPosAttentionFusion": 0, "CrossAttentionFusion": 0}
EXPECTED = {
    "lite_encoder": NONE | {"WindowAttentionFusion": 4},  # attention stages hold 1 + 2 + 1 blocks
    "sammed_encoder": NONE | {"RelPosAttentionFusion": 3},  # 2 windowed blocks and 1 global block
    "decoder": NONE | {"CrossAttentionFusion": 7},  # SAM's form: 2 layers x (self, token->image, image->token) + final
    "factored_decoder": NONE | {"CrossAttentionFusion": 2},  # the cross-attentions are factored; 2 self-attentions
}
FACTORED_SOFTMAXES = {"factored_decoder": 5}  # its 5 cross-attentions keep their own (factored) softmax


@pytest.fixture(autouse=True)
def switch_unset(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)


def _perturbed(model, seed: int = 0):
    """Random non-zero parameters everywhere, so zero-initialised bias / rel-pos tables cannot hide wiring mistakes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    """Slimmed graphs as the build writes them: tiny LiteMedSAM encoder + decoder (both forms), tiny SAM-Med2D encoder."""
    from sammed_edge.export import graphs as export
    from sammed_edge.export.models import build_model

    folder = tmp_path_factory.mktemp("fusion")
    lite = _perturbed(build_model("lite_medsam", **TINY_LITE_MEDSAM))
    sammed = _perturbed(build_model("sam_med2d_vit_b", **TINY_SAM_MED2D), seed=1)
    paths = {
        "lite_encoder": export.export_encoder(lite, folder / "lite_encoder.onnx"),
        "decoder": export.export_decoder(lite, folder / "decoder.onnx", form="sam"),
        "factored_decoder": export.export_decoder(lite, folder / "factored_decoder.onnx", form="factored"),
        "sammed_encoder": export.export_encoder(sammed, folder / "sammed_encoder.onnx"),
    }
    out = {}
    for name, path in paths.items():
        export.slim(path)
        out[name] = onnx.load(str(path))
    return out


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    feeds = random_feeds(model, {"num_points": 3}, seed=seed)
    if "point_labels" in feeds:  # a box (labels 2, 3) and a positive click, in the model frame
        feeds["point_labels"] = np.array([[2, 3, 1]], np.float32)
        feeds["point_coords"] = np.array([[[4, 6], [40, 50], [20, 30]]], np.float32)
        feeds["has_mask_input"] = np.array([1], np.float32)
    return feeds


@pytest.mark.parametrize("op", [MHA, ATTENTION])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_fused_count_per_form(graphs, name, op):
    fused, counts = fuse_attention(graphs[name], op=op)
    assert counts == EXPECTED[name]
    assert count_fused(fused)[op] == sum(EXPECTED[name].values())
    assert sum(node.op_type == "Softmax" for node in fused.graph.node) == FACTORED_SOFTMAXES.get(name, 0)
    opset = max(o.version for o in fused.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (23 if op == ATTENTION else 17)


@pytest.mark.parametrize("op", [MHA, ATTENTION])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_outputs_match_on_onnxruntime(graphs, name, op):
    fused, _ = fuse_attention(graphs[name], op=op)
    report = verify_fusion(graphs[name], fused, [_feeds(graphs[name], seed) for seed in range(2)], rtol=1e-4)
    assert set(report) == {out.name for out in graphs[name].graph.output}


@pytest.mark.openvino
@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
@pytest.mark.parametrize("op", [MHA, ATTENTION])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_outputs_match_on_openvino(graphs, name, op):
    fused, _ = fuse_attention(graphs[name], target="openvino", op=op)
    verify_fusion(graphs[name], fused, _feeds(graphs[name]), backend="openvino", rtol=1e-4)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fusing_twice_fuses_nothing_more(graphs, name):
    once, _ = fuse_attention(graphs[name])
    twice, counts = fuse_attention(once)
    assert counts == NONE
    assert twice.SerializeToString() == once.SerializeToString()


def test_input_model_is_not_modified(graphs):
    before = graphs["lite_encoder"].SerializeToString()
    fuse_attention(graphs["lite_encoder"])
    assert graphs["lite_encoder"].SerializeToString() == before


def test_each_fusion_class_fuses_only_its_form(graphs):
    for fusion, forms in ((WindowAttentionFusion, ["lite_encoder"]), (RelPosAttentionFusion, ["sammed_encoder"]),
                          (CrossAttentionFusion, ["decoder", "factored_decoder"])):
        for name, model in graphs.items():
            assert fusion().count(model) == (EXPECTED[name][fusion.__name__] if name in forms else 0), (fusion, name)


def _mlp_classifier() -> onnx.ModelProto:
    """A graph with a Softmax that is not attention (logits of a linear layer) and no attention at all."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "p_t"], ["gram"]), helper.make_node("Transpose", ["p"], ["p_t"], perm=[1, 0])]
    graph = helper.make_graph([nodes[0], nodes[1], nodes[3], nodes[2]], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("gram", TensorProto.FLOAT, [2, 2])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_without_attention_is_unchanged():
    model = _mlp_classifier()
    fused, counts = fuse_attention(model)
    assert counts == NONE
    assert fused.SerializeToString() == model.SerializeToString()
    conv = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])]), opset_imports=[helper.make_opsetid("", 17)])
    assert fusion_guard(conv) == "no Softmax: the graph has no attention"
    fused, counts = fuse_attention(conv, op=ATTENTION)
    assert counts == NONE and fused.SerializeToString() == conv.SerializeToString()  # not even upgraded


def test_switch_turns_fusion_off(graphs, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert fusion_guard(graphs["decoder"]) == f"{DISABLE_ENV} is set"
    fused, counts = fuse_attention(graphs["decoder"])
    assert counts == NONE and fused.SerializeToString() == graphs["decoder"].SerializeToString()
    assert not recommended("onnxruntime", "encoder")


def test_guard_reasons(graphs):
    assert fusion_guard(graphs["decoder"]) is None
    assert "unknown target" in fusion_guard(graphs["decoder"], target="tensorrt")
    assert "unknown fused operator" in fusion_guard(graphs["decoder"], op="FlashAttention")
    with pytest.raises(ValueError, match="opset 23"):
        CrossAttentionFusion(ATTENTION).apply(graphs["decoder"])


def test_window_fusion_without_constant_projection(graphs):
    """A qkv weight that is not an initializer (e.g. dequantised) cannot be permuted: the fused node is fed by a
    B x S x N x 3 x H split instead, with the same result."""
    model = onnx.ModelProto()
    model.CopyFrom(graphs["lite_encoder"])
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and "attn/qkv" in n.name]
    assert gemms, "the exported TinyViT qkv projection is expected as a Gemm after onnxslim"
    for gemm in gemms:
        model.graph.node.append(helper.make_node("Identity", [gemm.input[1]], [gemm.input[1] + "_dynamic"]))
        gemm.input[1] = gemm.input[1] + "_dynamic"
    from sammed_edge.kernels.onnx.graph import GraphView

    GraphView(model).finish([])  # restore topological order
    fused, counts = fuse_attention(model)
    assert counts == EXPECTED["lite_encoder"]
    assert sum(n.op_type == "Identity" for n in fused.graph.node) == len(gemms)
    verify_fusion(model, fused, _feeds(model))


def test_verification_raises_on_a_wrong_fusion(graphs):
    fused, _ = fuse_attention(graphs["decoder"])
    node = next(n for n in fused.graph.node if n.op_type == MHA)
    for attr in node.attribute:
        if attr.name == "scale":
            attr.f *= 1.5
    with pytest.raises(FusionVerificationError, match="exceeds"):
        verify_fusion(graphs["decoder"], fused, _feeds(graphs["decoder"]))


@pytest.mark.skipif(not (BUNDLE / "decoder.onnx").is_file(), reason=f"{BUNDLE} has not been built")
def test_default_bundle_counts():
    """The build fused every attention of the default bundle: 10 TinyViT blocks, the factored decoder's 2 self-attentions."""
    import json

    encoder = onnx.load(str(BUNDLE / "encoder.onnx"))
    decoder = onnx.load(str(BUNDLE / "decoder.onnx"))
    assert count_fused(encoder)[ATTENTION] == 10 and count_fused(decoder)[ATTENTION] == 2
    assert not any(node.op_type == "Softmax" for node in encoder.graph.node)
    assert fuse_attention(encoder)[1] == NONE  # nothing left to fuse
    graphs = json.loads((BUNDLE / "manifest.json").read_text())["graphs"]
    for name, expected in (("encoder", {"WindowAttentionFusion": 10}), ("decoder", {"CrossAttentionFusion": 2})):
        record = graphs[name]["fusion"]
        assert record["applied"] and record["counts"] == NONE | expected and record["max_relative_diff"] < 1e-4