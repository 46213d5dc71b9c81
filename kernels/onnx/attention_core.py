r"""The shared part of the attention fusions: the core they all match, and the base class that rewrites it.

Every fusion starts from the shared core that `F.scaled_dot_product_attention` exports to,

        Q (heads split)      K^T (heads split)
              |                    |
         [Mul s_q]            [Mul s_k]        scale, optional (either side), or Div by a constant
                \                 /
                 MatMul (scores)
                       |
                 [Add bias]                    additive bias, optional
                       |
                 Softmax(axis=-1)
                       |
                    MatMul <------------ V (heads split)

and differs in how the heads are split before and merged after it. The fused node is either onnxruntime's
`com.microsoft.MultiHeadAttention` or the standard `Attention` (opset 23), both fed with B x S x (N*H) query / key /
value tensors, an optional (B|1) x N x S x T additive bias and `scale = s_q * s_k`; their B x S x (N*H) output
feeds the Reshape that merged the heads, so everything after it is untouched. Matching completes before any edit,
so a subgraph that does not fit is left exactly as it was.

This module owns the operator names, the core's matcher (`match_core`), the helpers that read head splits and
build the fused node's inputs, and `AttentionFusion`, whose subclasses (`encoder_attention`, `decoder_attention`)
only say how the heads are split and merged around the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

from .graph import FLOAT_TYPES, GraphView, attribute

MHA = "MultiHeadAttention"
ATTENTION = "Attention"
OPS = (MHA, ATTENTION)
ATTENTION_OPSET = 23  # first opset with the standard Attention operator


@dataclass
class Core:
    """The matched scores-softmax-values core of one attention."""

    softmax: onnx.NodeProto
    scores: onnx.NodeProto  # MatMul(Q, K^T)
    values: onnx.NodeProto  # MatMul(P, V)
    q: str  # unscaled head-split queries
    k: str  # unscaled head-split, transposed keys
    v: str
    scale: float
    bias: str | None
    nodes: list[onnx.NodeProto]


@dataclass
class Plan:
    """A complete match: what to build (`build` returns query, key, value, bias names) and where the output goes."""

    num_heads: int
    build: Callable[[], tuple[str, str, str, str | None]]
    output: onnx.NodeProto  # the Reshape that merged the heads: its data input becomes the fused output
    nodes: list[onnx.NodeProto] = field(default_factory=list)


def _unscale(view: GraphView, name: str) -> tuple[str, float, list[onnx.NodeProto]]:
    node = view.producer(name, ("Mul", "Div"))
    if node is None or view.single_user(name) is None:
        return name, 1.0, []
    for index in ((0, 1) if node.op_type == "Mul" else (1,)):
        value = view.scalar(node.input[index])
        if value is not None and value != 0.0:
            return node.input[1 - index], (value if node.op_type == "Mul" else 1.0 / value), [node]
    return name, 1.0, []


def match_core(view: GraphView, softmax: onnx.NodeProto) -> Core | None:
    """Match the attention core ending at `softmax`, or None."""
    scores_name = softmax.input[0]
    rank = len(view.shape(scores_name) or [])
    axis = attribute(softmax, "axis", -1 if view.opset() >= 13 else 1)
    if axis != -1 and not (rank and axis == rank - 1):
        return None
    if view.elem_type(scores_name) not in (None, *FLOAT_TYPES):
        return None
    values = view.single_user(softmax.output[0])
    if values is None or values.op_type != "MatMul" or values.input[0] != softmax.output[0]:
        return None
    nodes = [softmax, values]
    bias = None
    node = view.producer(scores_name)
    if node is not None and node.op_type == "Add":
        if view.single_user(node.output[0]) is not softmax:
            return None
        for index in (0, 1):
            candidate = view.producer(node.input[index], "MatMul")
            if candidate is not None and view.constant(candidate.input[1]) is None:
                nodes.append(node)
                bias = node.input[1 - index]
                node = candidate
                break
        else:
            return None
    if node is None or node.op_type != "MatMul" or view.single_user(node.output[0]) is None:
        return None
    q, q_scale, q_nodes = _unscale(view, node.input[0])
    k, k_scale, k_nodes = _unscale(view, node.input[1])
    return Core(softmax, node, values, q, k, values.input[1], q_scale * k_scale, bias, nodes + [node, *q_nodes, *k_nodes])


def transpose_of(view: GraphView, name: str, perm: list[int]) -> onnx.NodeProto | None:
    node = view.producer(name, "Transpose")
    return node if node is not None and list(attribute(node, "perm", [])) == perm else None


def reshape_target(view: GraphView, node: onnx.NodeProto | None, length: int) -> list[int] | None:
    """Constant target of a Reshape with `length` entries and no copy-from-input (0) entries, else None."""
    if node is None or node.op_type != "Reshape":
        return None
    target = view.ints(node.input[1])
    if target is None or len(target) != length or 0 in target or target.count(-1) > 1:
        return None
    return target


def merge_reshape(view: GraphView, name: str, perm: list[int]) -> onnx.NodeProto | None:
    """The Reshape that merges heads after `name` through Transpose(perm): the fused output replaces its data."""
    transpose = view.single_user(name)
    if transpose is None or transpose.op_type != "Transpose" or list(attribute(transpose, "perm", [])) != perm:
        return None
    reshape = view.single_user(transpose.output[0])
    target = view.ints(reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None
    if target is None or 0 in target:
        return None
    return reshape


def split_sizes(view: GraphView, split: onnx.NodeProto) -> list[int] | None:
    if len(split.input) > 1 and split.input[1]:
        return view.ints(split.input[1])
    sizes = attribute(split, "split")
    return list(sizes) if sizes else None


def add_split(view: GraphView, name: str, axis: int, sizes: list[int], hint: str) -> list[str]:
    if view.opset() >= 13:
        node = view.add_node("Split", [name, view.add_constant(np.array(sizes, np.int64), f"{hint}/split")], len(sizes),
                             name=f"{hint}/Split", axis=axis)
    else:
        node = view.add_node("Split", [name], len(sizes), name=f"{hint}/Split", axis=axis, split=sizes)
    return list(node.output)


def add_reshape(view: GraphView, name: str, target: list[int], hint: str) -> str:
    shape = view.add_constant(np.array(target, np.int64), f"{hint}/shape")
    return view.add_node("Reshape", [name, shape], 1, name=f"{hint}/Reshape").output[0]


def bias_plan(view: GraphView, bias: str | None, heads: int) -> Callable[[str], str | None] | None:
    """How to turn a bias on B x N x S x T scores into (B|1) x N x S x T; None when it cannot be."""
    if bias is None:
        return lambda hint: None
    value = view.constant(bias)
    if value is not None:
        if value.ndim == 2:
            value = value[None, None]
        elif value.ndim == 3:
            value = value[None]
        if value.ndim != 4 or value.shape[1] not in (1, heads):
            return None
        full = np.broadcast_to(value, (value.shape[0], heads, *value.shape[2:])).astype(value.dtype)
        return lambda hint: view.add_constant(full, f"{hint}/attention_bias")
    shape = view.shape(bias)
    if shape is None or len(shape) != 4 or shape[1] != heads:
        return None
    return lambda hint: bias


class AttentionFusion:
    """Base of the attention fusions: finds every matching subgraph and replaces it by one fused node.

    Args:
        op: fused operator: "MultiHeadAttention" (com.microsoft, any opset) or "Attention" (standard, opset >= 23).
    """

    def __init__(self, op: str = MHA) -> None:
        if op not in OPS:
            raise ValueError(f"unknown fused attention operator {op!r}; choose from {OPS}")
        self.op = op

    def match(self, view: GraphView, core: Core) -> Plan | None:
        """Check the head split / merge around `core` without editing; a Plan when this fusion applies."""
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto) -> int:
        """Fuse every matching attention of `model` in place; returns how many fused nodes were created."""
        if self.op == ATTENTION and _opset(model) < ATTENTION_OPSET:
            raise ValueError(f"the standard Attention operator needs opset {ATTENTION_OPSET}; the model has "
                             f"{_opset(model)} (use upgrade_opset first)")
        if not any(node.op_type == "Softmax" for node in model.graph.node):
            return 0
        view = GraphView(model)
        fused = 0
        touched: list[onnx.NodeProto] = []
        for softmax in [node for node in model.graph.node if node.op_type == "Softmax"]:
            core = match_core(view, softmax)
            plan = self.match(view, core) if core is not None else None
            if plan is None:
                continue
            replaced = view.producer(plan.output.input[0])
            self._emit(view, core, plan)
            touched += core.nodes + plan.nodes + ([replaced] if replaced is not None else [])
            fused += 1
        if fused:
            view.finish(touched)
        return fused

    def count(self, model: onnx.ModelProto) -> int:
        """How many subgraphs `apply` would fuse (on a copy; `model` is not changed)."""
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return self.apply(copy)

    def _emit(self, view: GraphView, core: Core, plan: Plan) -> None:
        prefix = core.softmax.name.rsplit("/", 1)[0] if "/" in core.softmax.name else core.softmax.name or "attention"
        query, key, value, bias = plan.build()
        if self.op == MHA:
            inputs = [query, key, value] + (["", "", bias] if bias else [])
            node = view.add_node(MHA, inputs, 1, name=f"{prefix}/{MHA}", domain="com.microsoft",
                                 num_heads=plan.num_heads, scale=float(core.scale))
            view.ensure_opset("com.microsoft", 1)
        else:
            inputs = [query, key, value] + ([bias] if bias else [])
            node = view.add_node(ATTENTION, inputs, 1, name=f"{prefix}/{ATTENTION}", q_num_heads=plan.num_heads,
                                 kv_num_heads=plan.num_heads, scale=float(core.scale))
        view.set_input(plan.output, 0, node.output[0])


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
