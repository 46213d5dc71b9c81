"""Post-training int8 quantization of the image encoder: onnxruntime static quantization and OpenVINO NNCF.

Choices (measured on LiteMedSAM, box Dice on held-out dev-set masks; docs/quantization.md):
    onnxruntime: QDQ, int8 per-channel weights, uint8 per-tensor activations (u8s8, the VNNI path), on the Linear
        layers (Gemm) only. Quantizing the convolutions as well broke the embedding (mean relative error ~1.0,
        -3 Dice points) and ran no faster because onnxruntime left DequantizeLinear around them.
    OpenVINO: NNCF post-training quantization with the transformer model type (LayerNorm, Softmax and
        attention-score inputs kept in floating point), convolutions included.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sammed_edge.runtime.contract import ENCODER_INPUT

log = logging.getLogger(__name__)

ORT_METHODS = ("minmax", "entropy", "percentile")
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm", "DynamicQuantizeMatMul",
                "MatMulIntegerToFloat", "QAttention", "QLinearAdd")


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed 1 x 3 x S x S tensors."""

    def __init__(self, tensors: Sequence[np.ndarray]) -> None:
        self._it = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._it, None)
        return None if tensor is None else {ENCODER_INPUT: tensor}


def quantize_onnxruntime(
    fp32: str | Path,
    out: str | Path,
    tensors: Sequence[np.ndarray],
    op_types: Sequence[str] = ("Gemm",),
    method: str = "minmax",
    symmetric: bool = False,
) -> dict[str, Any]:
    """Static int8 quantization of an encoder graph with onnxruntime.

    Args:
        fp32: fp32 ONNX encoder.
        out: quantized ONNX to write.
        tensors: calibration inputs (1 x 3 x S x S float32, preprocessed).
        op_types: operator types to quantize.
        method: calibration method ("minmax", "entropy", "percentile" at 99.99).
        symmetric: int8 symmetric activations (explicit quantization for TensorRT) instead of uint8 asymmetric.

    Returns:
        report: settings and the int8 kernels onnxruntime actually runs (`int8_kernels`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in ORT_METHODS:
        raise ValueError(f"calibration method must be one of {ORT_METHODS}")
    out = Path(out)
    prepared = out.with_name(out.stem + ".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.99
    quantize_static(
        str(prepared), str(out), _Reader(tensors), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types),
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[method],
        extra_options=extra,
    )
    prepared.unlink(missing_ok=True)
    for leftover in out.parent.glob("augmented_model*.onnx"):
        leftover.unlink()
    return {"tool": "onnxruntime.quantize_static", "format": "QDQ", "weights": "int8 per-channel",
            "activations": "int8 symmetric per-tensor" if symmetric else "uint8 per-tensor", "op_types": list(op_types), "calibration": method,
            "calibration_images": len(tensors), "int8_kernels": onnxruntime_kernels(out)}


def onnxruntime_kernels(path: str | Path) -> dict[str, int]:
    """Operator counts of the graph onnxruntime actually executes (after its own fusions): int8 kernels and the
    DequantizeLinear nodes left over (QDQ pairs it could not fuse run in fp32, no faster than before)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        counts = Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)
    report = {op: n for op, n in counts.items() if op in INT8_KERNELS}
    report["DequantizeLinear_left"] = counts.get("DequantizeLinear", 0)
    return report


# NNCF's presets: "mixed" (its default for transformers) quantizes activations asymmetrically, "performance"
# symmetrically. On LiteMedSAM's token-form encoder the symmetric one was no faster in turns and lost more accuracy
# (docs/quantization.md), so "mixed" stays.
OPENVINO_PRESETS = ("mixed", "performance")
DEFAULT_OPENVINO_PRESET = "mixed"


def quantize_openvino(fp32: str | Path, out_xml: str | Path, tensors: Sequence[np.ndarray], model_type: str = "transformer",
                      preset: str = DEFAULT_OPENVINO_PRESET) -> dict[str, Any]:
    """NNCF post-training int8 quantization of an encoder graph; writes OpenVINO IR (.xml + .bin).

    Args:
        fp32: fp32 ONNX encoder.
        out_xml: IR to write.
        tensors: calibration inputs.
        model_type: "transformer" (keeps LayerNorm / Softmax paths in float) or "cnn".
        preset: one of OPENVINO_PRESETS (symmetric or asymmetric activations; weights are symmetric in both).
    """
    import nncf
    import openvino as ov

    if preset not in OPENVINO_PRESETS:
        raise ValueError(f"unknown NNCF preset {preset!r}; choose from {OPENVINO_PRESETS}")
    # convert_model, not Core.read_model: it folds constant subgraphs first. Read as is, a grouped convolution's
    # weights reach it through a Reshape, NNCF puts its weight quantizer after that Reshape, the weights stay float
    # in the IR and OpenVINO runs those depthwise convolutions in bf16 (LiteMedSAM's stage 0: docs/quantization.md).
    model = ov.convert_model(str(fp32))
    kwargs: dict[str, Any] = {"subset_size": len(tensors), "preset": getattr(nncf.QuantizationPreset, preset.upper())}
    if model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    quantized = nncf.quantize(model, nncf.Dataset([{ENCODER_INPUT: t} for t in tensors]), **kwargs)
    symmetric = symmetric_depthwise_inputs(quantized)
    ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    counts = Counter(op.get_type_name() for op in quantized.get_ops())
    return {"tool": f"nncf {nncf.__version__}", "model_type": model_type, "preset": preset, "calibration_images": len(tensors),
            "fake_quantize_nodes": counts.get("FakeQuantize", 0), "symmetric_depthwise_inputs": symmetric}


def symmetric_depthwise_inputs(model: Any) -> int:
    """Widen the int8 input ranges of a quantized model's depthwise convolutions to signed symmetric ones, in place.

    NNCF's "mixed" preset gives each depthwise convolution an asymmetric per-channel input range [lo, hi]; OpenVINO's
    CPU plugin runs a convolution with such zero points only on its generic int8 kernel (`jit_avx512_I8`). Each
    channel's range becomes [-a * 128 / 127, a] with a = max(|lo|, |hi|): zero point 0, every calibrated value still
    inside, one bit less resolution for inputs of one sign; OpenVINO then picks its `brgconv` depthwise int8 kernel.
    On LiteMedSAM's encoder: ~2 % faster, the embedding's RMS error against fp32 0.214 of its standard deviation
    instead of 0.205 (docs/benchmarks.md). Returns how many inputs were changed.
    """
    from openvino import opset13

    changed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "GroupConvolution":
            continue
        quantizer = op.input_value(0).get_node()
        if quantizer.get_type_name() != "FakeQuantize" or quantizer.get_levels() != 256:
            continue
        bounds = [quantizer.input_value(i).get_node() for i in range(1, 5)]
        if any(node.get_type_name() != "Constant" for node in bounds):
            continue
        low, high, out_low, out_high = (node.get_data().astype(np.float32) for node in bounds)
        if not (np.array_equal(low, out_low) and np.array_equal(high, out_high)):
            continue  # a quantizer that also rescales is not an activation range; left as NNCF wrote it
        half = np.maximum(np.maximum(np.abs(low), np.abs(high)), 1e-6)
        for port, value in zip(range(1, 5), (-half * 128 / 127, half, -half * 128 / 127, half)):
            quantizer.input(port).replace_source_output(opset13.constant(value.astype(np.float32)).output(0))
        changed += 1
    if changed:
        model.validate_nodes_and_infer_types()
    return changed


def convert_openvino(onnx_path: str | Path, out_xml: str | Path, weights: str = "fp32") -> dict[str, Any]:
    """ONNX -> OpenVINO IR with its weights stored in `weights` precision ("fp32" or "fp16").

    fp16 storage is for graphs that run in bf16 or fp16: half the file, and half the weight pages a process maps
    (OpenVINO converts them to its compute precision on load).
    """
    import openvino as ov

    if weights not in ("fp32", "fp16"):
        raise ValueError(f"weights must be 'fp32' or 'fp16', not {weights!r}")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(out_xml), compress_to_fp16=weights == "fp16")
    return {"tool": f"openvino {ov.get_version()}", "weights": weights}
