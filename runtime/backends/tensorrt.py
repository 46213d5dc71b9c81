"""TensorRT backend: a serialized engine, numpy in / numpy out through cuda-python (no torch).

Engines only run on the TensorRT version and GPU model they were built with; the bundle records both and the
backend refuses a mismatch with a clear error instead of a crash inside TensorRT.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..contract import GraphContract
from .base import BackendError


def _check(result: Any) -> Any:
    """Unpack a cuda-python (error, value...) tuple, raising on error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise BackendError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend:
    """One TensorRT engine for one graph.

    Args:
        path: serialized engine (.engine / .plan).
        contract: the graph's I/O contract.
        threads: unused (GPU); accepted so that callers can pass CPU options uniformly.
        device: CUDA device index.
        built_with: {"tensorrt": version, "gpu": name} from the manifest, checked against this machine.

    Each thread gets its own execution context and CUDA stream, so `run` may be called concurrently.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, contract: GraphContract, threads: int | None = None, device: int = 0,
                 built_with: Mapping[str, Any] | None = None) -> None:
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendError("the tensorrt backend needs tensorrt and cuda-python: pip install 'sammed-edge[tensorrt]'") from None
        self._trt, self._cudart = trt, cudart
        _check(cudart.cudaSetDevice(device))
        props = _check(cudart.cudaGetDeviceProperties(device))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        if built_with:
            if built_with.get("tensorrt") and built_with["tensorrt"] != trt.__version__:
                raise BackendError(f"engine built with TensorRT {built_with['tensorrt']}, this machine has {trt.__version__}: rebuild the bundle here")
            if built_with.get("gpu") and built_with["gpu"] not in gpu and gpu not in built_with["gpu"]:
                raise BackendError(f"engine built on {built_with['gpu']}, this GPU is {gpu}: rebuild the bundle here")
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT cannot load the engine {path}")
        self.contract = contract
        self._device = device
        self._gpu = gpu
        self._local = threading.local()

    def _context(self) -> tuple[Any, Any]:
        local = self._local
        if getattr(local, "context", None) is None:
            _check(self._cudart.cudaSetDevice(self._device))
            local.context = self.engine.create_execution_context()
            local.stream = _check(self._cudart.cudaStreamCreate())
        return local.context, local.stream

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.contract.check_feeds(feeds)
        cudart = self._cudart
        context, stream = self._context()
        buffers = []
        try:
            for spec in self.contract.inputs:
                array = np.ascontiguousarray(feeds[spec.name])
                context.set_input_shape(spec.name, array.shape)
                pointer = _check(cudart.cudaMallocAsync(array.nbytes, stream))
                buffers.append(pointer)
                _check(cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
                context.set_tensor_address(spec.name, pointer)
            outputs = {}
            for spec in self.contract.outputs:
                shape = tuple(context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=np.float32)
                pointer = _check(cudart.cudaMallocAsync(host.nbytes, stream))
                buffers.append(pointer)
                context.set_tensor_address(spec.name, pointer)
                outputs[spec.name] = (host, pointer)
            if not context.execute_async_v3(stream):
                raise BackendError("TensorRT execution failed")
            for host, pointer in outputs.values():
                _check(cudart.cudaMemcpyAsync(host.ctypes.data, pointer, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
            _check(cudart.cudaStreamSynchronize(stream))
            return {name: host for name, (host, _) in outputs.items()}
        finally:
            for pointer in buffers:
                cudart.cudaFreeAsync(pointer, stream)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "version": self._trt.__version__, "gpu": self._gpu, "device": self._device}
