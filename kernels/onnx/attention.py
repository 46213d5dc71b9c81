r"""Attention fusions: rewrite each exported attention subgraph into one fused attention node.

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


def _perm(view: GraphView, name: str, perm: list[int]) -> onnx.NodeProto | None:
    node = view.producer(name, "Transpose")
    return node if node is not None and list(attribute(node, "perm", [])) == perm else None


def _reshape_target(view: GraphView, node: onnx.NodeProto | None, length: int) -> list[int] | None:
    """Constant target of a Reshape with `length` entries and no copy-from-input (0) entries, else None."""
    if node is None or node.op_type != "Reshape":
        return None
    target = view.ints(node.input[1])
    if target is None or len(target) != length or 0 in target or target.count(-1) > 1:
        return None
    return target


def _merge_reshape(view: GraphView, name: str, perm: list[int]) -> onnx.NodeProto | None:
    """The Reshape that merges heads after `name` through Transpose(perm): the fused output replaces its data."""
    transpose = view.single_user(name)
    if transpose is None or transpose.op_type != "Transpose" or list(attribute(transpose, "perm", [])) != perm:
        return None
    reshape = view.single_user(transpose.output[0])
    target = view.ints(reshape.input[1]) if reshape is not None and reshape.op_type == "Reshape" else None
    if target is None or 0 in target:
        return None
    return reshape


def _split_sizes(view: GraphView, split: onnx.NodeProto) -> list[int] | None:
    if len(split.input) > 1 and split.input[1]:
        return view.ints(split.input[1])
    sizes = attribute(split, "split")
    return list(sizes) if sizes else None


def _split(view: GraphView, name: str, axis: int, sizes: list[int], hint: str) -> list[str]:
    if view.opset() >= 13:
        node = view.add_node("Split", [name, view.add_constant(np.array(sizes, np.int64), f"{hint}/split")], len(sizes),
                             name=f"{hint}/Split", axis=axis)
    else:
        node = view.add_node("Split", [name], len(sizes), name=f"{hint}/Split", axis=axis, split=sizes)
    return list(node.output)


def _reshape(view: GraphView, name: str, target: list[int], hint: str) -> str:
    shape = view.add_constant(np.array(target, np.int64), f"{hint}/shape")
    return view.add_node("Reshape", [name, shape], 1, name=f"{hint}/Reshape").output[0]


def _bias_plan(view: GraphView, bias: str | None, heads: int) -> Callable[[str], str | None] | None:
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


class WindowAttentionFusion(AttentionFusion):
    r"""TinyViT's windowed attention (LiteMedSAM encoder): per-head [q | k | v] projection, learned bias table.

    Matched (after constant folding the gathered bias table is a constant N x S x S)::

        X (B*nW x S x C, or (B*nW*S) x C)
          |
        Gemm / MatMul+Add (qkv)                       columns per head: [q_h | k_h | v_h]
          |
        Reshape [B, S, N, 3H] -> Transpose(0,2,1,3) -> Split(axis=3, [H, H, H])
          |                                           |                |
          q                                   Transpose(0,1,3,2)       v
          |                                           |                |
         [Mul s] -------- MatMul ------------------ [Mul s]            |
                            |                                          |
                          Add (bias N x S x S) -> Softmax -> MatMul <--+
                                                                |
                                            Transpose(0,2,1,3) -> Reshape [.., N*H] -> proj

    Rewritten: the qkv weights are permuted to [q | k | v] (all heads each), so a Split on the last axis and
    three Reshapes give B x S x D query, key and value; the bias becomes a 1 x N x S x S constant. When the
    projection is not a constant Gemm / MatMul+Add, the tensor is reshaped to B x S x N x 3 x H and split instead.
    """

    def match(self, view: GraphView, core: Core) -> Plan | None:
        split = view.producer(core.q, "Split")
        if split is None or len(split.output) != 3 or split.output[0] != core.q or split.output[2] != core.v:
            return None
        key_t = _perm(view, core.k, [0, 1, 3, 2])
        if key_t is None or key_t.input[0] != split.output[1] or attribute(split, "axis", 0) not in (3, -1):
            return None
        heads_t = _perm(view, split.input[0], [0, 2, 1, 3])
        reshape = view.producer(heads_t.input[0]) if heads_t is not None else None
        target = _reshape_target(view, reshape, 4)
        if target is None or view.single_user(heads_t.output[0]) is not split or view.single_user(reshape.output[0]) is not heads_t:
            return None
        batch, tokens, heads, width = target
        sizes = _split_sizes(view, split)
        head_dim = sizes[0] if sizes and len(set(sizes)) == 1 else (width // 3 if width > 0 else None)
        if heads <= 0 or tokens <= 0 or not head_dim or (width > 0 and width != 3 * head_dim):
            return None
        output = _merge_reshape(view, core.values.output[0], [0, 2, 1, 3])
        bias = _bias_plan(view, core.bias, heads)
        if output is None or bias is None:
            return None
        dim = heads * head_dim
        packed = reshape.input[0]
        # permuting the projection's columns is only safe when nothing but this attention reads the old layout
        inside = {id(n) for n in core.nodes} | {id(key_t)}
        exclusive = view.single_user(packed) is reshape and all(
            id(user) in inside for out in (*split.output, key_t.output[0]) for user in view.users(out))
        projection = _constant_projection(view, packed, 3 * dim) if exclusive else None
        hint = core.softmax.name.rsplit("/", 1)[0] or "attention"

        def build() -> tuple[str, str, str, str | None]:
            if projection is not None:
                order = np.arange(3 * dim).reshape(heads, 3, head_dim).transpose(1, 0, 2).reshape(-1)
                projection(order, hint)
                parts = _split(view, packed, -1, [dim] * 3, f"{hint}/qkv")
            else:
                grouped = _reshape(view, packed, [batch, tokens, heads, 3, head_dim], f"{hint}/qkv")
                parts = _split(view, grouped, 3, [1, 1, 1], f"{hint}/qkv")
            q, k, v = (_reshape(view, part, [batch, tokens, dim], f"{hint}/{n}") for part, n in zip(parts, "qkv"))
            return q, k, v, bias(hint)

        return Plan(heads, build, output, [split, key_t, heads_t, reshape])


def _constant_projection(view: GraphView, name: str, width: int) -> Callable[[np.ndarray, str], None] | None:
    """For a constant-weight linear layer writing `name` (only read by the head split): a function that permutes
    its output columns in place (exact: the same dot products, stored in another order)."""
    node = view.producer(name)
    if node is None:
        return None
    if node.op_type == "Gemm":
        weight, bias = view.constant(node.input[1]), view.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        trans_b = attribute(node, "transB", 0)
        if (weight is None or weight.ndim != 2 or attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
                or attribute(node, "beta", 1.0) != 1.0 or weight.shape[0 if trans_b else 1] != width
                or (bias is not None and bias.shape != (width,))):
            return None

        def permute_gemm(order: np.ndarray, hint: str) -> None:
            view.set_input(node, 1, view.add_constant(weight[order] if trans_b else weight[:, order], f"{hint}/qkv_weight"))
            if bias is not None:
                view.set_input(node, 2, view.add_constant(bias[order], f"{hint}/qkv_bias"))

        return permute_gemm
    if node.op_type == "Add":
        for index in (0, 1):
            bias = view.constant(node.input[index])
            matmul = view.producer(node.input[1 - index], "MatMul")
            weight = view.constant(matmul.input[1]) if matmul is not None else None
            if (bias is not None and bias.shape == (width,) and weight is not None and weight.ndim == 2
                    and weight.shape[1] == width and view.single_user(matmul.output[0]) is node):

                def permute_matmul(order: np.ndarray, hint: str, index=index, bias=bias, matmul=matmul, weight=weight) -> None:
                    view.set_input(matmul, 1, view.add_constant(weight[:, order], f"{hint}/qkv_weight"))
                    view.set_input(node, index, view.add_constant(bias[order], f"{hint}/qkv_bias"))

                return permute_matmul
    return None


class RelPosAttentionFusion(AttentionFusion):
    r"""SAM / SAM-Med2D ViT attention, windowed or global, with decomposed relative positions (or without bias).

    Matched::

        X (B x S x C or (B*S) x C)
          |
        Gemm / MatMul+Add (qkv)                        columns: [q | k | v], heads inside each
          |
        Reshape [B, S, 3, N, H] -> Transpose(2,0,3,1,4) -> Reshape [3, B*N, S, H] -> Split(axis=0)
          |                                       |                           |
        Squeeze -> q ---------+          Squeeze -> Transpose(0,2,1)     Squeeze -> v
          |                   |                   |                           |
          |                 [Mul s] -- MatMul -- [Mul s]                      |
          |                              |                                    |
          +-> rel-pos terms (Einsum) -> Add (B*N x S x S bias) -> Softmax -> MatMul
                                                                               |
                                Reshape [B, N, h, w, H] -> Transpose(0,2,3,1,4) -> Reshape [.., N*H] -> proj

    Rewritten: Split of the qkv output on its last axis gives B x S x D query / key / value; the bias is
    reshaped to B x N x S x S; the rel-pos terms read queries rebuilt from the new query tensor
    (Reshape -> Transpose(0,2,1,3) -> Reshape), so the full qkv transpose disappears.
    """

    def match(self, view: GraphView, core: Core) -> Plan | None:
        squeezes = [view.producer(core.q, "Squeeze"), None, view.producer(core.v, "Squeeze")]
        key_t = _perm(view, core.k, [0, 2, 1])
        squeezes[1] = view.producer(key_t.input[0], "Squeeze") if key_t is not None else None
        if any(s is None for s in squeezes):
            return None
        split = view.producer(squeezes[0].input[0], "Split")
        if (split is None or attribute(split, "axis", 0) != 0 or len(split.output) != 3
                or [s.input[0] for s in squeezes] != list(split.output)):
            return None
        merged = view.producer(split.input[0])
        stacked = _reshape_target(view, merged, 4)
        grouped_t = _perm(view, merged.input[0], [2, 0, 3, 1, 4]) if stacked is not None else None
        grouped = view.producer(grouped_t.input[0]) if grouped_t is not None else None
        target = _reshape_target(view, grouped, 5)
        if target is None or target[2] != 3 or stacked[0] != 3:
            return None
        batch, tokens, _, heads, head_dim = target
        if head_dim <= 0:
            head_dim = stacked[3] if stacked[3] > 0 else _last_dim(view, grouped.input[0], 3 * heads)
        if heads <= 0 or tokens <= 0 or not head_dim:
            return None
        output = _merge_chain(view, core.values.output[0], heads)
        bias = _relpos_bias_plan(view, core.bias, heads, tokens)
        if output is None or bias is None:
            return None
        dim = heads * head_dim
        packed = grouped.input[0]
        hint = core.softmax.name.rsplit("/", 1)[0] or "attention"
        inside = {id(n) for n in core.nodes}
        others = [u for u in view.users(core.q) if id(u) not in inside]

        def build() -> tuple[str, str, str, str | None]:
            parts = _split(view, packed, -1, [dim] * 3, f"{hint}/qkv")
            q, k, v = (_reshape(view, part, [batch, tokens, dim], f"{hint}/{n}") for part, n in zip(parts, "qkv"))
            if others:
                per_head = _reshape(view, q, [batch, tokens, heads, head_dim], f"{hint}/q_heads")
                moved = view.add_node("Transpose", [per_head], 1, name=f"{hint}/q_heads/Transpose", perm=[0, 2, 1, 3]).output[0]
                rebuilt = _reshape(view, moved, [-1, tokens, head_dim], f"{hint}/q_heads")
                for user in others:
                    for index, name in enumerate(user.input):
                        if name == core.q:
                            view.set_input(user, index, rebuilt)
            return q, k, v, bias(hint)

        return Plan(heads, build, output, [*squeezes, key_t, split, merged, grouped_t, grouped])


def _last_dim(view: GraphView, name: str, divisor: int) -> int | None:
    shape = view.shape(name)
    if shape and shape[-1] and shape[-1] % divisor == 0:
        return shape[-1] // divisor
    return None


def _merge_chain(view: GraphView, name: str, heads: int) -> onnx.NodeProto | None:
    """B*N x S x H values -> Reshape [B, N, (h, w | S), H] -> Transpose (heads next to H) -> Reshape."""
    split_heads = view.single_user(name)
    target = view.ints(split_heads.input[1]) if split_heads is not None and split_heads.op_type == "Reshape" else None
    if target is None or len(target) not in (4, 5) or target[1] != heads or 0 in target:
        return None
    perm = [0, 2, 1, 3] if len(target) == 4 else [0, 2, 3, 1, 4]
    return _merge_reshape(view, split_heads.output[0], perm)


def _relpos_bias_plan(view: GraphView, bias: str | None, heads: int, tokens: int) -> Callable[[str], str | None] | None:
    """A B*N x S x T bias (computed from the queries) -> B x N x S x T by a Reshape."""
    if bias is None:
        return lambda hint: None
    shape = view.shape(bias)
    if shape is not None and len(shape) == 4:
        return _bias_plan(view, bias, heads)
    if shape is not None and (len(shape) != 3 or shape[1] not in (None, tokens)):
        return None
    producer = view.producer(bias, "Reshape")
    if producer is not None and view.single_user(bias) is not None and _reshape_target(view, producer, 3) is not None:
        columns = _reshape_target(view, producer, 3)[2]

        def retarget(hint: str) -> str:
            view.set_input(producer, 1, view.add_constant(np.array([-1, heads, tokens, columns], np.int64), f"{hint}/bias_shape"))
            return bias

        return retarget
    columns = shape[2] if shape is not None and shape[2] else -1
    if columns == -1:
        return None
    return lambda hint: _reshape(view, bias, [-1, heads, tokens, columns], f"{hint}/bias")


class CrossAttentionFusion(AttentionFusion):
    r"""The two-way transformer's attention (SAM decoder): separate q / k / v projections, self or cross.

    Matched::

        queries (B x S x C)     keys (B x T x C)       values (B x T x C)
            |                        |                      |
          q_proj                   k_proj                 v_proj        (any producer of B x S x D / (B*S) x D)
            |                        |                      |
        Reshape [B, S, N, H]     Reshape [B, T, N, H]   Reshape [B, T, N, H]
            |                        |                      |
        Transpose(0,2,1,3)       Transpose(0,2,3,1)     Transpose(0,2,1,3)
            |                        |                      |
          [Mul s] ---- MatMul ---- [Mul s]                  |
                         |                                  |
                     [Add bias] -> Softmax -------------> MatMul
                                                            |
                                  Transpose(0,2,1,3) -> Reshape [.., N*H] -> out_proj

    Rewritten: the projections' outputs (reshaped to B x S x D when they are 2-D) feed the fused node directly.
    """

    def match(self, view: GraphView, core: Core) -> Plan | None:
        sources = []
        for name, perm in ((core.q, [0, 2, 1, 3]), (core.k, [0, 2, 3, 1]), (core.v, [0, 2, 1, 3])):
            transpose = _perm(view, name, perm)
            reshape = view.producer(transpose.input[0]) if transpose is not None else None
            target = _reshape_target(view, reshape, 4)
            if target is None:
                return None
            sources.append((transpose, reshape, target))
        heads = {t[2] for _, _, t in sources}
        head_dims = {t[3] for _, _, t in sources}
        if len(heads) != 1 or len(head_dims) != 1:
            return None
        heads_n, head_dim = heads.pop(), head_dims.pop()
        if heads_n <= 0 or head_dim <= 0:
            return None
        output = _merge_reshape(view, core.values.output[0], [0, 2, 1, 3])
        bias = _bias_plan(view, core.bias, heads_n)
        if output is None or bias is None:
            return None
        dim = heads_n * head_dim
        hint = core.softmax.name.rsplit("/", 1)[0] or "attention"

        def build() -> tuple[str, str, str, str | None]:
            names = []
            for (_, reshape, target), part in zip(sources, "qkv"):
                source = reshape.input[0]
                shape = view.shape(source)
                if shape is not None and len(shape) == 3 and shape[2] == dim:
                    names.append(source)
                else:
                    names.append(_reshape(view, source, [target[0], target[1], dim], f"{hint}/{part}"))
            return names[0], names[1], names[2], bias(hint)

        return Plan(heads_n, build, output, [n for s in sources for n in s[:2]])


FUSIONS: tuple[type[AttentionFusion], ...] = (WindowAttentionFusion, RelPosAttentionFusion, CrossAttentionFusion)
