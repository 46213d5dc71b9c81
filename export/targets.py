"""Choosing a build target for the machine at hand (`--target auto`)."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess


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
