"""OpenVINO backend: CPU (or another OpenVINO device), ONNX or IR graphs, fp32 / bf16 inference precision."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..contract import GraphContract
from .base import BackendError

_HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
_PRECISIONS = {"fp32": "f32", "f32": "f32", "bf16": "bf16", "fp16": "f16", "f16": "f16", "bf16-or-fp32": None}


def cpu_has_bf16(core: Any = None) -> bool:
    """Whether OpenVINO's CPU plugin computes in bf16 on this machine (AVX512-BF16 or AMX)."""
    import openvino as ov

    return "BF16" in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend:
    """One compiled OpenVINO model for one graph.

    Args:
        path: ONNX file or OpenVINO IR (.xml with its .bin beside it).
        contract: the graph's I/O contract.
        threads: inference threads (INFERENCE_NUM_THREADS; default: OpenVINO's choice).
        device: OpenVINO device name ("CPU", "GPU", "AUTO").
        hint: performance hint, "latency" (one image at a time, the interactive case) or "throughput".
        streams: parallel inference streams (default 1 with the latency hint).
        inference_precision: "fp32", "bf16" (needs AVX512-BF16 / AMX), "fp16", or "bf16-or-fp32": bf16 where the
            CPU has it, else fp32 (what reduced-precision bundles record, so they run on any CPU).
        cache_dir: folder for OpenVINO's compiled-model cache (faster second start).
        check_feeds: validate feeds against the contract before running.
        perf_count: collect OpenVINO's per-layer timings (`layer_profile`; a small cost on every run).
        mmap: map the weights file instead of reading it (OpenVINO's default). Off by default here: the compiled
            model keeps its own copy of the weights, and the mapped file pages then stayed resident beside it
            (a few MiB more peak memory per bundle, docs/benchmarks.md).

    Each thread gets its own infer request, so `run` may be called concurrently.
    """

    name = "openvino"

    def __init__(
        self,
        path: str | Path,
        contract: GraphContract,
        threads: int | None = None,
        device: str = "CPU",
        hint: str = "latency",
        streams: int | None = None,
        inference_precision: str = "fp32",
        cache_dir: str | Path | None = None,
        check_feeds: bool = True,
        perf_count: bool = False,
        mmap: bool = False,
    ) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs OpenVINO: pip install 'sammed-edge[openvino]'") from None
        if hint not in _HINTS:
            raise BackendError(f"hint must be one of {sorted(_HINTS)}")
        if inference_precision not in _PRECISIONS:
            raise BackendError(f"inference_precision must be one of {sorted(_PRECISIONS)}")
        core = ov.Core()
        core.set_property({"ENABLE_MMAP": bool(mmap)})
        if device.split(":")[0] not in ("AUTO", "HETERO", "MULTI") and device not in core.available_devices:
            raise BackendError(f"OpenVINO device {device!r} is not available (has {core.available_devices})")
        has_bf16 = device != "CPU" or cpu_has_bf16(core)
        if inference_precision == "bf16-or-fp32":
            inference_precision = "bf16" if has_bf16 else "fp32"
        if inference_precision == "bf16" and not has_bf16:
            raise BackendError("bf16 inference needs a CPU with AVX512-BF16 or AMX; this one has none")
        config: dict[str, Any] = {"PERFORMANCE_HINT": _HINTS[hint], "INFERENCE_PRECISION_HINT": _PRECISIONS[inference_precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams or hint == "latency":
            config["NUM_STREAMS"] = int(streams or 1)
        if perf_count:
            config["PERF_COUNT"] = True
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        self._config = config
        try:
            self.compiled = core.compile_model(str(path), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for unreadable graphs
            raise BackendError(f"OpenVINO cannot compile {path}: {exc}") from None
        self.contract = contract
        self.check_feeds = check_feeds
        names = [port.get_any_name() for port in self.compiled.inputs]
        if sorted(names) != sorted(contract.input_names):
            raise BackendError(f"{path} has inputs {names}, the contract says {contract.input_names}")
        self._local = threading.local()
        self._options = {"threads": threads, "device": device, "hint": hint, "streams": config.get("NUM_STREAMS"),
                         "inference_precision": inference_precision, "cache_dir": str(cache_dir) if cache_dir else None,
                         "mmap": bool(mmap)}
        self._version = ov.get_version()

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.check_feeds:
            self.contract.check_feeds(feeds)
        # share_inputs: OpenVINO reads the arrays in place instead of copying them (the 4 MB embedding on every click)
        results = self._request().infer(dict(feeds), share_inputs=True)
        # results are views into the request's buffers: copy before the next call reuses them
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {name: np.array(by_name[name], copy=True) for name in self.contract.output_names}

    def layer_profile(self) -> list[dict[str, Any]]:
        """Per-layer timings of this thread's last `run` (needs `perf_count=True`): name, type, implementation
        (OpenVINO's `exec_type`; "ref" / "unknown" ones are generic fallbacks) and ms, in execution order."""
        if "PERF_COUNT" not in self._config:
            raise BackendError("layer_profile() needs the backend created with perf_count=True")
        return [{"name": info.node_name, "type": info.node_type, "implementation": info.exec_type,
                 "ms": info.real_time.total_seconds() * 1e3} for info in self._request().profiling_info]

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self._version, **self._options}
