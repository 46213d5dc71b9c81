"""onnxruntime backend: CPU, or CUDA when its execution provider is present."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..contract import GraphContract
from .base import BackendError

_OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def execution_providers(device: str, available: list[str], tf32: bool = False) -> list[Any]:
    """onnxruntime's provider list for `device` ("cpu", "cuda" or "auto"), given the providers this onnxruntime has.

    Raises:
        BackendError: "cuda" without the CUDA provider, or an unknown device.
    """
    if device not in ("cpu", "cuda", "auto"):
        raise BackendError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'auto'")
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise BackendError(f"device='cuda' but this onnxruntime has no CUDA provider (has {available}); install onnxruntime-gpu")
    if device != "cpu" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """One onnxruntime session for one graph.

    Args:
        path: ONNX file.
        contract: the graph's I/O contract (feeds are checked against it).
        threads: intra-op threads (default: onnxruntime's choice, one per physical core).
        device: "cpu", "cuda" or "auto" (CUDA when the CUDA execution provider is available).
        tf32: let the CUDA provider compute fp32 matrix products and convolutions in TF32 (onnxruntime's own default).
            Off here, so that an fp32 graph computes in fp32 on a GPU as on the CPU; TF32 changes an embedding by
            about 3e-3 of its range (docs/gpu.md).
        memory_arena: keep onnxruntime's CPU memory arena (faster repeated runs, higher peak memory).
        memory_pattern: pre-plan buffers for fixed shapes.
        arena_shrinkage: give the arena's unused memory back after every run (lower peak memory across runs of a
            large graph, at the cost of re-allocating on the next run).
        spinning: let the worker threads spin (busy-wait) after their work, onnxruntime's default: faster hand-offs
            within a run, but for a while after a run they compete with whatever runs next on the same cores.
        optimization: graph optimisation level ("disable", "basic", "extended", "all").
        check_feeds: validate every feed against the contract before running.
    """

    name = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        contract: GraphContract,
        threads: int | None = None,
        device: str = "auto",
        tf32: bool = False,
        memory_arena: bool = True,
        memory_pattern: bool = True,
        arena_shrinkage: bool = False,
        spinning: bool = True,
        optimization: str = "all",
        check_feeds: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("the onnxruntime backend needs onnxruntime: pip install 'sammed-edge[onnxruntime]'") from None
        if optimization not in _OPT_LEVELS:
            raise BackendError(f"optimization must be one of {sorted(_OPT_LEVELS)}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = memory_arena
        options.enable_mem_pattern = memory_pattern
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[optimization])
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        providers = execution_providers(device, ort.get_available_providers(), tf32)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise BackendError(f"onnxruntime cannot load {path}: {exc}") from None
        self.contract = contract
        self.check_feeds = check_feeds
        self._run_options = ort.RunOptions()
        if arena_shrinkage and memory_arena:
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(contract.input_names):
            raise BackendError(f"{path} has inputs {names}, the contract says {contract.input_names}")
        self._options = {"threads": threads, "device": device, "tf32": tf32, "memory_arena": memory_arena,
                         "memory_pattern": memory_pattern, "arena_shrinkage": arena_shrinkage, "spinning": spinning,
                         "optimization": optimization}
        self._version = ort.__version__

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.check_feeds:
            self.contract.check_feeds(feeds)
        outputs = self.session.run(self.contract.output_names, dict(feeds), self._run_options)
        return dict(zip(self.contract.output_names, outputs))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self._version, "providers": self.session.get_providers(), **self._options}
