"""Reduced-precision and OpenVINO targets, the accuracy gate, and what can be proven of TensorRT without it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sammed_edge.export import trt_build
from sammed_edge.export.bundler import TARGETS, BuildOptions, build_bundle
from sammed_edge.export.calibration import CalibrationSet, split_dataset
from sammed_edge.export.gate import GateError
from sammed_edge.export.predictor import TorchPredictor
from sammed_edge.export.targets import choose_target
from sammed_edge.kernels.onnx import TARGETS as FUSION_TARGETS
from sammed_edge.runtime import Predictor
from sammed_edge.runtime.bundle import load_bundle
from sammed_edge.runtime.samples import phantom

REPO = Path(__file__).resolve().parents[2]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO and NNCF are not installed")


def tiny_calibration() -> CalibrationSet:
    images = [phantom(96 + 8 * i, seed=i)[0] for i in range(10)]
    return CalibrationSet(images[:6], [], images[6:], source="synthetic phantoms")


def build(tiny_model, target, tmp_path, **options):
    images = [phantom(110, seed=20)[0], phantom(140, seed=21)[0]]
    return build_bundle(tiny_model, TARGETS[target], tmp_path / target, images, model_name="tiny", checkpoint=None,
                        options=BuildOptions(**options), calibration=tiny_calibration())


def test_target_table():
    assert {"onnx-fp32", "onnx-int8", "ov-fp32", "ov-int8", "ov-bf16", "trt-fp16", "trt-int8"} <= set(TARGETS)
    assert TARGETS["ov-int8"].precision == {"encoder": "int8", "decoder": "bf16"} and TARGETS["ov-int8"].reduced
    assert not TARGETS["onnx-fp32"].reduced
    name, reason = choose_target()
    assert name in TARGETS and reason


@pytest.mark.parametrize("gpu, tensorrt, ort_cuda, expected", [
    ("NVIDIA H200", True, True, "trt-fp16"),
    ("NVIDIA H200", False, True, "onnx-fp32"),
    ("NVIDIA H200", False, False, "ov-int8"),
    (None, False, True, "ov-int8"),
])
def test_auto_ranking_on_simulated_machines(monkeypatch, gpu, tensorrt, ort_cuda, expected):
    # the GPU, TensorRT and onnxruntime-gpu are simulated (none is on this machine); OpenVINO is what is installed
    if not HAS_OPENVINO and expected == "ov-int8":
        pytest.skip("OpenVINO and NNCF are not installed")
    from sammed_edge.export import targets

    real_has = targets._has
    monkeypatch.setattr(targets, "nvidia_gpu", lambda: gpu)
    monkeypatch.setattr(targets, "_has", lambda module: tensorrt if module == "tensorrt" else real_has(module))
    monkeypatch.setattr(targets, "onnxruntime_has_cuda", lambda: ort_cuda)
    monkeypatch.setattr(targets.platform, "machine", lambda: "x86_64")
    name, reason = targets.choose_target()
    assert name == expected
    if gpu and expected != "trt-fp16":
        assert gpu in reason


def test_onnxruntime_cuda_check_matches_the_installed_build():
    import onnxruntime

    from sammed_edge.export.targets import onnxruntime_has_cuda

    assert onnxruntime_has_cuda() == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())


def test_onnx_int8_is_gated_and_runs_int8_kernels(tiny_model, tmp_path):
    # a random tiny model quantizes less gracefully than real weights: a wide budget keeps this a test of the plumbing
    result = build(tiny_model, "onnx-int8", tmp_path, box_budget=5.0, point_budget=5.0)
    manifest = result.manifest
    entry = manifest["graphs"]["encoder"]
    assert entry["precision"] == "int8" and entry["quantization"]["calibration_images"] == 6
    kernels = entry["quantization"]["int8_kernels"]
    assert sum(v for k, v in kernels.items() if k != "DequantizeLinear_left") > 0, kernels
    gate = manifest["verification"]["gate"]
    assert gate["ground_truth"] == "fp32 predictions" and set(gate["drop"]) == {"box", "points1"}
    assert manifest["verification"]["encoder"]["judged_by"] == "accuracy gate"
    assert manifest["provenance"]["calibration"]["source"] == "synthetic phantoms"
    # the onnxruntime targets keep SAM's embedding layout and the softmax their attention fusion matches
    assert {e["embedding_layout"] for e in manifest["graphs"].values()} == {"nchw"} and manifest["graphs"]["decoder"]["softmax"] == "inside"
    predictor = Predictor.from_bundle(result.path)
    predictor.set_image(phantom(100)[0])
    masks, _, _ = predictor.predict(box=[10, 10, 80, 80])
    assert masks.shape == (3, 100, 100)


def test_gate_failure_leaves_no_bundle_and_no_gate_records(tiny_model, tmp_path):
    with pytest.raises(GateError, match="accuracy gate failed"):
        build(tiny_model, "onnx-int8", tmp_path, box_budget=-1.0)
    assert not (tmp_path / "onnx-int8").exists()
    result = build(tiny_model, "onnx-int8", tmp_path, box_budget=-1.0, gate=False)
    gate = result.manifest["verification"]["gate"]
    assert gate["enforced"] is False and gate["passed"] is False and result.manifest["verification"]["passed"] is False


@needs_openvino
def test_openvino_fp32_matches_torch(tiny_model, tmp_path):
    result = build(tiny_model, "ov-fp32", tmp_path)
    manifest = result.manifest
    assert manifest["graphs"]["encoder"]["format"] == "openvino-ir" and manifest["graphs"]["encoder"]["weights_file"] == "encoder.bin"
    load_bundle(result.path)  # both IR files hashed and checked
    runtime, reference = Predictor.from_bundle(result.path), TorchPredictor(tiny_model)
    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    runtime.set_image(image)
    reference.set_image(image)
    ours = runtime.predict(point_coords=[[40, 30]], point_labels=[1])[2]
    np.testing.assert_allclose(ours, reference.predict(point_coords=[[40, 30]], point_labels=[1])[2], atol=1e-4, rtol=1e-4)
    assert manifest["graphs"]["decoder"]["conversion"]["weights"] == "fp32"
    # the OpenVINO targets pass the embedding as 1 x h w x C tokens, and record it
    assert {entry["embedding_layout"] for entry in manifest["graphs"].values()} == {"tokens"}
    assert manifest["graphs"]["decoder"]["softmax"] == "after"
    embedding, _ = runtime._current()
    assert embedding.ndim == 3 and embedding.shape[1] == np.prod(tiny_model.prompt_encoder.image_embedding_size)
    # OpenVINO reads the feeds in place: the cached embedding stays as it was
    before = embedding.copy()
    for _ in range(3):
        runtime.predict(point_coords=[[40, 30]], point_labels=[1], mask_input=runtime.predict(point_coords=[[40, 30]], point_labels=[1])[2][:1])
    np.testing.assert_array_equal(embedding, before)
    # weights read into memory (the default) or mapped from the file: the same results
    assert runtime.decoder.describe()["mmap"] is False
    mapped = Predictor.from_bundle(result.path, mmap=True)
    assert mapped.decoder.describe()["mmap"] is True
    mapped.set_image(image)
    np.testing.assert_array_equal(mapped.predict(point_coords=[[40, 30]], point_labels=[1])[2], ours)
    # concurrent calls (one infer request per thread) give the serial results
    prompts = [dict(point_coords=[[10 + i, 20 + i]], point_labels=[1]) for i in range(30)]
    serial = [runtime.predict(**p)[2] for p in prompts]
    mismatches = []

    def worker() -> None:
        for i, p in enumerate(prompts):
            if not np.array_equal(runtime.predict(**p)[2], serial[i]):
                mismatches.append(i)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not mismatches


@needs_openvino
def test_openvino_int8(tiny_model, tmp_path):
    # as for onnx-int8: the random tiny model's drop depends on the CPU's kernels, so the budget is wide here
    result = build(tiny_model, "ov-int8", tmp_path, box_budget=5.0, point_budget=5.0, click_budget=5.0)
    entry = result.manifest["graphs"]["encoder"]
    assert entry["quantization"]["fake_quantize_nodes"] > 0
    # the decoder runs in bf16 where the CPU can, so its IR stores fp16 weights
    decoder = result.manifest["graphs"]["decoder"]
    assert decoder["conversion"]["weights"] == "fp16"
    import openvino as ov

    constants = [op for op in ov.Core().read_model(str(result.path / decoder["file"])).get_ops() if op.get_type_name() == "Constant"]
    assert any(op.get_element_type() == ov.Type.f16 for op in constants)
    gate = result.manifest["verification"]["gate"]
    assert gate["holdout_masks"] > 0
    # a bf16 decoder is also judged on clicks 1 and 3 (an fp32 decoder, as onnx-int8's, is not)
    assert set(gate["drop"]) == {"box", "points1", "click1", "click3"} and gate["budget"]["click3"] == 5.0


@needs_openvino
def test_reduced_decoder_fails_the_build_on_its_click_budget(tiny_model, tmp_path):
    with pytest.raises(GateError, match=r"click1 Dice .* budget -1\.0"):
        build(tiny_model, "ov-bf16", tmp_path, box_budget=100.0, point_budget=100.0, click_budget=-1.0)
    assert not (tmp_path / "ov-bf16").exists()


def test_unknown_nncf_preset_is_refused(tmp_path):
    from sammed_edge.export.quantize import quantize_openvino

    with pytest.raises(ValueError, match="unknown NNCF preset 'fast'"):
        quantize_openvino(tmp_path / "missing.onnx", tmp_path / "x.xml", [], preset="fast")


@needs_openvino
def test_depthwise_inputs_become_symmetric_and_nothing_else_changes():
    """Only a depthwise convolution's activation quantizer is widened, to [-a * 128/127, a] per channel."""
    import openvino as ov
    from openvino import opset13 as ops

    from sammed_edge.export.quantize import symmetric_depthwise_inputs

    def quantizer(x, low, high, out_low=None, out_high=None):
        bounds = [low, high, low if out_low is None else out_low, high if out_high is None else out_high]
        return ops.fake_quantize(x, *(ops.constant(np.array(b, np.float32).reshape(1, -1, 1, 1)) for b in bounds), 256)

    x = ops.parameter([1, 2, 8, 8], np.float32)
    depthwise_weights = ops.constant(np.ones((2, 1, 1, 3, 3), np.float32))
    dense_weights = ops.constant(np.ones((2, 2, 1, 1), np.float32))
    depthwise = ops.group_convolution(quantizer(x, [-0.17, -0.5], [2.0, 0.25]), depthwise_weights, [1, 1], [1, 1], [1, 1], [1, 1])
    dense = ops.convolution(quantizer(x, [-0.17, -0.5], [2.0, 0.25]), dense_weights, [1, 1], [0, 0], [0, 0], [1, 1])
    rescaling = ops.group_convolution(quantizer(x, [-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 2.0]), depthwise_weights,
                                      [1, 1], [1, 1], [1, 1], [1, 1])
    model = ov.Model([depthwise, dense, rescaling], [x])

    assert symmetric_depthwise_inputs(model) == 1

    def bounds(op):
        node = op.input_value(0).get_node()
        return [node.input_value(i).get_node().get_data().reshape(-1) for i in range(1, 5)]

    by_name = {op.get_friendly_name(): op for op in model.get_ops()}
    changed = bounds(by_name[depthwise.get_friendly_name()])
    np.testing.assert_allclose(changed[1], [2.0, 0.5])
    np.testing.assert_allclose(changed[0], [-2.0 * 128 / 127, -0.5 * 128 / 127], rtol=1e-6)
    np.testing.assert_array_equal(changed[0], changed[2])
    np.testing.assert_array_equal(changed[1], changed[3])
    np.testing.assert_allclose(bounds(by_name[dense.get_friendly_name()])[0], [-0.17, -0.5])
    np.testing.assert_allclose(bounds(by_name[rescaling.get_friendly_name()])[2], [0.0, 0.0])


def test_build_records_attention_fusion(tiny_bundle, tiny_model, tmp_path):
    graphs = load_bundle(tiny_bundle).manifest["graphs"]
    for name in ("encoder", "decoder"):
        record = graphs[name]["fusion"]
        assert record["applied"] and record["op"] == "Attention" and sum(record["counts"].values()) > 0, record
        assert record["max_relative_diff"] < 1e-4
    unfused = build(tiny_model, "onnx-fp32", tmp_path, fuse=False).manifest
    assert unfused["graphs"]["encoder"]["fusion"] == {"applied": False, "reason": "--no-fuse"}
    assert unfused["provenance"]["exporter"]["fuse_attention"] is False


def test_tensorrt_target_fails_at_once_without_it(tmp_path):
    if not TARGETS["trt-fp16"].missing():
        pytest.skip("TensorRT and a GPU are present")
    out = subprocess.run([sys.executable, str(REPO / "export" / "build.py"), "--target", "trt-fp16", "--out", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cannot be built here" in out.stderr and ("tensorrt" in out.stderr or "NVIDIA GPU" in out.stderr)
    assert not (tmp_path / "b").exists()


def test_graphs_satisfy_tensorrt_constraints(tiny_model, tmp_path):
    # TensorRT targets build their engines from the unfused graphs (no attention fusion for that backend)
    assert TARGETS["trt-fp16"].backend not in FUSION_TARGETS
    bundle = load_bundle(build(tiny_model, "onnx-fp32", tmp_path, fuse=False).path)
    for graph in ("encoder", "decoder"):
        report = trt_build.check_tensorrt_compat(bundle.path(graph), bundle.contract(graph))
        assert report["problems"] == [], report
    decoder = trt_build.check_tensorrt_compat(bundle.path("decoder"), bundle.contract("decoder"))
    assert decoder["dynamic_axes"] == {"num_points": [1, 4, 64]}


def test_tensorrt_check_flags_foreign_operators(tmp_path, tiny_bundle):
    import onnx
    from onnx import helper

    bundle = load_bundle(tiny_bundle)
    model = onnx.load(str(bundle.path("decoder")))
    model.graph.node.append(helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft"))
    path = tmp_path / "foreign.onnx"
    onnx.save(model, str(path))
    report = trt_build.check_tensorrt_compat(path, bundle.contract("decoder"))
    assert any("com.microsoft::FusedGemm" in p for p in report["problems"])


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_engine_build_and_run(tiny_model, tmp_path):
    pytest.importorskip("tensorrt")
    if TARGETS["trt-fp16"].missing():
        pytest.skip("needs TensorRT, cuda-python and an NVIDIA GPU")
    result = build(tiny_model, "trt-fp16", tmp_path)
    predictor = Predictor.from_bundle(result.path)
    predictor.set_image(phantom(100)[0])
    assert predictor.predict(box=[10, 10, 80, 80])[0].shape == (3, 100, 100)


def test_calibration_split_is_disjoint(shared):
    from sammed_edge.runtime.io import read_dataset

    items = read_dataset(shared("data", "medseg-dev"))
    calib, holdout = split_dataset(items, calibration=32, holdout=60)
    assert len(calib) == 32 and len(holdout) == 60
    assert not {p.name for p in calib} & {item.image.name for item in holdout}
    again = split_dataset(items, calibration=32, holdout=60)
    assert [p.name for p in again[0]] == [p.name for p in calib]
