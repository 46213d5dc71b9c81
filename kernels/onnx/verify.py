"""Check a fused graph against its unfused original: same inputs, every output within a relative tolerance.

The runtimes are imported only when a check on them is asked for (onnxruntime, openvino), so the fusions
themselves need nothing beyond onnx and numpy.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import onnx

BACKENDS = ("onnxruntime", "openvino")

_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.UINT8: np.uint8,
}


class FusionVerificationError(RuntimeError):
    """A fused graph disagrees with the unfused one beyond tolerance."""


def random_feeds(model: onnx.ModelProto, dims: Mapping[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every graph input: standard normal floats, zero integers / booleans.

    Args:
        model: the graph.
        dims: sizes of symbolic dimensions by name (3 for any name not given).
        seed: random seed.

    Returns:
        {input name: array of the input's dtype and shape}.
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    initializers = {init.name for init in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims.get(d.dim_param, 3) for d in tensor.shape.dim]
        dtype = _NUMPY.get(tensor.elem_type)
        if dtype is None:
            raise ValueError(f"input {value.name!r} has an element type random_feeds does not make ({tensor.elem_type})")
        if np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[value.name] = np.zeros(shape, dtype)
    return feeds


def runner(model: onnx.ModelProto, backend: str = "onnxruntime", threads: int | None = None) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """A CPU session of `model` on `backend`: feeds -> {output name: array}.

    OpenVINO runs with `INFERENCE_PRECISION_HINT=f32`: on CPUs with bf16 units its default would compute in bf16,
    which no fp32 comparison survives.
    """
    names = [out.name for out in model.graph.output]
    if backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return lambda feeds: dict(zip(names, session.run(names, dict(feeds))))
    if backend == "openvino":
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
            config["NUM_STREAMS"] = 1
        compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", config)
        request = compiled.create_infer_request()

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = request.infer(dict(feeds))
            return {out.get_any_name(): np.array(results[out]) for out in compiled.outputs}

        return run
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def compare_outputs(fused: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], rtol: float = 1e-4, atol: float = 0.0) -> dict[str, dict[str, float]]:
    """Per output: max |fused - reference|, max |reference|, their ratio and the bound `atol + rtol * max |reference|`;
    raises `FusionVerificationError` beyond the bound."""
    report = {}
    for name, ref in reference.items():
        ours = np.asarray(fused[name], np.float64)
        ref = np.asarray(ref, np.float64)
        if ours.shape != ref.shape:
            raise FusionVerificationError(f"{name}: fused shape {ours.shape} != unfused {ref.shape}")
        diff = float(np.abs(ours - ref).max()) if ref.size else 0.0
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        bound = atol + rtol * scale
        report[name] = {"max_abs_diff": diff, "max_abs_ref": scale, "relative": diff / scale if scale else diff, "bound": bound}
        if not diff <= bound:
            raise FusionVerificationError(
                f"{name}: max |fused - unfused| = {diff:.3g} exceeds {atol:g} + {rtol:g} x {scale:.3g} (max |unfused|)")
    return report


def verify_fusion(
    unfused: onnx.ModelProto,
    fused: onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | list[Mapping[str, np.ndarray]] | None = None,
    backend: str = "onnxruntime",
    rtol: float = 1e-4,
    atol: float = 0.0,
) -> dict[str, dict[str, float]]:
    """Run both graphs on the same inputs and raise `FusionVerificationError` when any output differs by more than
    `atol + rtol * max |unfused output|`.

    Args:
        unfused: the reference graph.
        fused: its fused version.
        feeds: one input dict or several (default: `random_feeds(unfused)`).
        backend: "onnxruntime" or "openvino" (CPU, fp32).
        rtol, atol: tolerance.

    Returns:
        {output name: {"max_abs_diff", "max_abs_ref", "relative" (their ratio), "bound"}}, worst over all feeds.
    """
    cases = [feeds] if isinstance(feeds, Mapping) else list(feeds) if feeds is not None else [random_feeds(unfused)]
    run_ref, run_fused = runner(unfused, backend), runner(fused, backend)
    worst: dict[str, dict[str, float]] = {}
    for case in cases:
        for name, row in compare_outputs(run_fused(case), run_ref(case), rtol, atol).items():
            if name not in worst or row["max_abs_diff"] > worst[name]["max_abs_diff"]:
                worst[name] = row
    return worst
