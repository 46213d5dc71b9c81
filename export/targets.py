"""Build targets (backend, artifact format and per-graph precision of each) and choosing one for the machine at
hand (`--target auto`)."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from . import graphs


def nvidia_gpu() -> str | None:
    """Name of the first NVIDIA GPU (via nvidia-smi), or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def onnxruntime_has_cuda() -> bool:
    """Whether the installed onnxruntime has its CUDA execution provider (onnxruntime-gpu)."""
    if not _has("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def choose_target() -> tuple[str, str]:
    """The best target this machine can build and run, with the reason (rankings from docs/benchmarks.md and
    docs/gpu.md)."""
    gpu = nvidia_gpu()
    if gpu and _has("tensorrt"):
        return "trt-fp16", f"NVIDIA {gpu} with TensorRT: fp16 engines"
    if gpu and onnxruntime_has_cuda():
        return "onnx-fp32", (f"NVIDIA {gpu} with onnxruntime's CUDA provider and no TensorRT: fp32 graphs on the GPU "
                             "(an H200 ran the encoder 27x faster than 16 CPU cores)")
    machine = platform.machine().lower()
    if _has("openvino") and _has("nncf") and machine in ("x86_64", "amd64"):
        reason = f"{machine} CPU with OpenVINO and NNCF: int8 encoder, the fastest CPU target measured"
        if gpu:
            reason += f" (an NVIDIA {gpu} is present but TensorRT is not installed)"
        return "ov-int8", reason
    if _has("onnxruntime"):
        return "onnx-int8", "onnxruntime only: int8 encoder through onnxruntime's u8s8 kernels"
    return "onnx-fp32", "no quantization toolkit available"


GRAPHS = ("encoder", "decoder")


@dataclass(frozen=True)
class GraphPlan:
    """How one graph is stored and run.

    Attributes:
        precision: "fp32", "int8" (post-training quantized weights and activations), "bf16" or "fp16".
        runtime_options: backend options the runtime applies to this graph (stored in the manifest).
    """

    precision: str = "fp32"
    runtime_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A build target: backend, artifact format and per-graph precision.

    Attributes:
        name: target name on the command line.
        backend: runtime backend of the bundle.
        artifact: "onnx", "openvino" (IR) or "tensorrt" (engine next to its ONNX).
        encoder, decoder: per-graph plans.
        description: one line for --help.
        requires: importable modules the build needs.
        encoder_form: how the encoder graph is written for this target where the model has that form
            (`graphs.ENCODER_FORMS`; chosen by measurement, docs/exporters.md).
        embedding_layout: how the embedding passes from encoder to decoder (`graphs.EMBEDDING_LAYOUTS`; chosen by
            measurement, docs/exporters.md#embedding-layout).
        decoder_softmax: where the factored decoder's token -> image attentions normalise their softmax
            (`graphs.SOFTMAX_PLACEMENTS`; chosen by measurement, docs/exporters.md#embedding-layout).
    """

    name: str
    backend: str
    artifact: str
    encoder: GraphPlan
    decoder: GraphPlan
    description: str
    requires: tuple[str, ...] = ("onnx", "onnxruntime")
    encoder_form: str = graphs.DEFAULT_ENCODER_FORM
    embedding_layout: str = graphs.DEFAULT_EMBEDDING_LAYOUT
    decoder_softmax: str = graphs.DEFAULT_SOFTMAX

    def plan(self, graph: str) -> GraphPlan:
        return self.encoder if graph == "encoder" else self.decoder

    @property
    def reduced(self) -> bool:
        """Any graph below fp32: judged by the accuracy gate instead of fp32 tolerances."""
        return any(self.plan(g).precision != "fp32" for g in GRAPHS)

    @property
    def precision(self) -> dict[str, str]:
        return {g: self.plan(g).precision for g in GRAPHS}

    def missing(self) -> list[str]:
        """What this machine lacks to build the target (empty when it can)."""
        lacking = [module for module in self.requires if importlib.util.find_spec(module) is None]
        if self.artifact == "tensorrt" and nvidia_gpu() is None:
            lacking.append("an NVIDIA GPU")
        return lacking


FP32 = GraphPlan()
# OpenVINO runs the layers NNCF left in float, and the decoder, in bf16 where the CPU can (measured on this
# AVX512-BF16 CPU: int8 encoder 440 -> 268 ms, decoder 35 -> 21 ms; the accuracy gate judges the result).
BF16_OR_FP32 = {"inference_precision": "bf16-or-fp32"}
# The OpenVINO targets write a TinyViT encoder in the token form: 0.79x (int8), 0.82x (bf16) and 0.85x (fp32) the
# model form's time in one interleaved run (docs/exporters.md#encoder-form).
TARGETS: dict[str, Target] = {
    "onnx-fp32": Target("onnx-fp32", "onnxruntime", "onnx", FP32, FP32,
                        "ONNX graphs for onnxruntime (CPU, or CUDA when present), fp32"),
    "onnx-int8": Target("onnx-int8", "onnxruntime", "onnx", GraphPlan("int8"), FP32,
                        "onnxruntime, encoder statically quantized to int8 (u8s8 QDQ), decoder fp32",
                        requires=("onnx", "onnxruntime")),
    "ov-fp32": Target("ov-fp32", "openvino", "openvino", FP32, FP32, "OpenVINO IR, fp32",
                      requires=("onnx", "onnxruntime", "openvino"), encoder_form="tokens", embedding_layout="tokens", decoder_softmax="after"),
    "ov-int8": Target("ov-int8", "openvino", "openvino", GraphPlan("int8", BF16_OR_FP32), GraphPlan("bf16", BF16_OR_FP32),
                      "OpenVINO IR, encoder int8 by NNCF post-training quantization, other layers and the decoder "
                      "in bf16 where the CPU has AVX512-BF16 / AMX (else fp32)",
                      requires=("onnx", "onnxruntime", "openvino", "nncf"), encoder_form="tokens", embedding_layout="tokens", decoder_softmax="after"),
    "ov-bf16": Target("ov-bf16", "openvino", "openvino", GraphPlan("bf16", {"inference_precision": "bf16"}),
                      GraphPlan("bf16", {"inference_precision": "bf16"}),
                      "OpenVINO IR run in bf16 (needs AVX512-BF16 / AMX)",
                      requires=("onnx", "onnxruntime", "openvino"), encoder_form="tokens", embedding_layout="tokens", decoder_softmax="after"),
    "trt-fp16": Target("trt-fp16", "tensorrt", "tensorrt", GraphPlan("fp16"), GraphPlan("fp16"),
                       "TensorRT engines (NVIDIA GPU), fp16 with LayerNorm / Softmax pinned to fp32",
                       requires=("onnx", "onnxruntime", "tensorrt", "cuda")),
    "trt-int8": Target("trt-int8", "tensorrt", "tensorrt", GraphPlan("int8"), GraphPlan("fp16"),
                       "TensorRT engines, encoder int8 by explicit Q/DQ from the calibration set, decoder fp16",
                       requires=("onnx", "onnxruntime", "tensorrt", "cuda")),
}
