"""TensorRT engines built in code from the verified ONNX graphs, and the checks that can run without TensorRT.

`check_tensorrt_compat` proves what can be proven on any machine: every operator is one TensorRT's ONNX parser
supports, the graph has no int64 / shape-tensor inputs (SAM's `orig_im_size` is not an input here: resizing is in
the runtime), the encoder's shape is static and the decoder's only dynamic axis is the point count, whose
optimisation profile comes from the I/O contract. `build_engine` needs TensorRT and an NVIDIA GPU.

fp16: LayerNorm is exported as ONNX LayerNormalization (opset 17, TensorRT's INormalization, fp32 accumulation);
the channel LayerNorm2d of the necks and the mask paths is decomposed into reductions, so those layers, and
Softmax, are pinned to fp32 (`FP32_LAYER_HINTS`) with precision constraints obeyed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sammed_edge.runtime.contract import GraphContract

log = logging.getLogger(__name__)

# ONNX operators (default domain) that TensorRT 10's ONNX parser supports and that our exporters emit.
TENSORRT_OPS = frozenset(
    "Abs Add And ArgMax Cast Ceil Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos CumSum Div Einsum Elu "
    "Equal Erf Exp Expand Flatten Floor Gather GatherElements Gemm GlobalAveragePool Greater GreaterOrEqual Gelu "
    "HardSigmoid Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log MatMul Max MaxPool "
    "Mean Min Mod Mul Neg Not Or Pad Pow PRelu Range Reciprocal ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum "
    "Relu Reshape Resize ScatterND Shape Sigmoid Sign Sin Slice Softmax Split Sqrt Squeeze Sub Tanh Tile Transpose "
    "Trilu Unsqueeze Where Xor QuantizeLinear DequantizeLinear".split()
)
FP32_LAYER_HINTS = ("ReduceMean", "Pow", "Sqrt", "Softmax", "LayerNorm")


class TensorRTUnavailable(RuntimeError):
    """TensorRT or an NVIDIA GPU is missing; the message says which."""


def check_tensorrt_compat(onnx_path: str | Path, contract: GraphContract) -> dict[str, Any]:
    """Check an ONNX graph against TensorRT's constraints; returns a report with `problems` (empty when fine)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    problems: list[str] = []
    ops = {(node.domain or "ai.onnx", node.op_type) for node in model.graph.node}
    foreign = sorted(f"{d}::{o}" for d, o in ops if d not in ("ai.onnx", "") )
    unsupported = sorted(o for d, o in ops if d in ("ai.onnx", "") and o not in TENSORRT_OPS)
    if foreign:
        problems.append(f"operators outside the ONNX domain: {foreign}")
    if unsupported:
        problems.append(f"operators TensorRT's parser does not support: {unsupported}")
    initializer_names = {init.name for init in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializer_names:
            continue
        elem = graph_input.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            problems.append(f"input {graph_input.name} is {onnx.TensorProto.DataType.Name(elem)}, not float32 "
                            "(shape tensors must be int32, and none should be needed)")
        dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        dynamic = [d for d in dims if isinstance(d, str)]
        allowed = set(contract.dynamic_axes)
        if any(d not in allowed for d in dynamic):
            problems.append(f"input {graph_input.name} has dynamic axes {dynamic} not covered by a profile ({sorted(allowed)})")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {"opset": opset, "operators": len(ops), "dynamic_axes": {k: list(v) for k, v in contract.dynamic_axes.items()},
            "problems": problems}


def require_tensorrt() -> Any:
    """The tensorrt module, or TensorRTUnavailable naming what is missing."""
    from .targets import nvidia_gpu

    gpu = nvidia_gpu()
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(
            "TensorRT targets need the tensorrt Python package and an NVIDIA GPU: "
            f"tensorrt is not installed{'' if gpu else ' and no NVIDIA GPU was found'} (pip install 'sammed-edge[tensorrt]')"
        ) from None
    if gpu is None:
        raise TensorRTUnavailable("TensorRT targets need an NVIDIA GPU; nvidia-smi found none")
    return trt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    contract: GraphContract,
    precision: str = "fp16",
    timing_cache: str | Path | None = None,
    workspace_gb: float = 4.0,
) -> dict[str, Any]:
    """Build a serialized TensorRT engine from an ONNX graph.

    Args:
        onnx_path: graph to build from (fp32, or with explicit Q/DQ nodes for int8).
        engine_path: engine file to write.
        contract: the graph's I/O contract (optimisation profiles for its dynamic axes).
        precision: "fp32", "fp16" or "int8" (int8 needs Q/DQ nodes in the graph: explicit quantization).
        timing_cache: file to read and update, making rebuilds fast.
        workspace_gb: builder workspace.

    Returns:
        report: TensorRT version, GPU, precision, profiles, layers pinned to fp32.
    """
    trt = require_tensorrt()
    from .targets import nvidia_gpu

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    pinned = []
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for index in range(network.num_layers):
            layer = network.get_layer(index)
            if any(hint in layer.name for hint in FP32_LAYER_HINTS) or layer.type == trt.LayerType.SOFTMAX:
                layer.precision = trt.float32
                layer.set_output_type(0, trt.float32)
                pinned.append(layer.name)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    if contract.dynamic_axes:
        profile = builder.create_optimization_profile()
        for spec in contract.inputs:
            if any(isinstance(d, str) for d in spec.shape):
                shapes = [[contract.dynamic_axes[d][k] if isinstance(d, str) else d for d in spec.shape] for k in range(3)]
                profile.set_shape(spec.name, *shapes)
        config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    Path(engine_path).write_bytes(bytes(serialized))
    if timing_cache:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt": trt.__version__, "gpu": nvidia_gpu(), "precision": precision, "pinned_fp32_layers": len(pinned),
            "profiles": {k: list(v) for k, v in contract.dynamic_axes.items()}}
