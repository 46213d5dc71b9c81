"""The small protocol every inference backend implements, and lazy loading by name."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from ..contract import GraphContract

# backend name -> "module:class"; modules are imported only when their backend is asked for
BACKENDS = {
    "onnxruntime": "sammed_edge.runtime.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "sammed_edge.runtime.backends.openvino:OpenVinoBackend",
    "tensorrt": "sammed_edge.runtime.backends.tensorrt:TensorRTBackend",
}
# backend name -> the module that provides its SDK
SDKS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


class BackendError(RuntimeError):
    """A backend that cannot be loaded or run (missing SDK, unsupported device, bad graph)."""


class Backend(Protocol):
    """Runs one graph: numpy arrays in, numpy arrays out, names and shapes from the graph's contract.

    Implementations must allow concurrent `run` calls from several threads.
    """

    name: str
    contract: GraphContract

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph on `feeds` (every contract input) and return every contract output."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend facts for reports: SDK version, device / providers, options."""
        ...


def available_backends() -> list[str]:
    """Backends whose SDK is importable here."""
    found = []
    for name in BACKENDS:
        if importlib.util.find_spec(SDKS.get(name, name)) is not None:
            found.append(name)
    return found


def load_backend(name: str, path: str | Path, contract: GraphContract, **options: Any) -> Backend:
    """Instantiate backend `name` for the graph at `path`.

    Raises:
        BackendError: unknown backend, or its SDK is not installed (with the pip extra that provides it).
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    module = importlib.import_module(module_name)
    return getattr(module, class_name)(path, contract, **options)
