r"""The image encoders' attention fusions: TinyViT's windowed attention with its learned bias table
(`WindowAttentionFusion`, LiteMedSAM) and SAM's ViT attention with decomposed relative positions
(`RelPosAttentionFusion`, SAM / SAM-Med2D), each with the helpers only it needs; both build on
`attention_core.AttentionFusion`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .attention_core import (
    AttentionFusion,
    Core,
    Plan,
    add_reshape,
    add_split,
    bias_plan,
    merge_reshape,
    reshape_target,
    split_sizes,
    transpose_of,
)
from .graph import GraphView, attribute


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
        key_t = transpose_of(view, core.k, [0, 1, 3, 2])
        if key_t is None or key_t.input[0] != split.output[1] or attribute(split, "axis", 0) not in (3, -1):
            return None
        heads_t = transpose_of(view, split.input[0], [0, 2, 1, 3])
        reshape = view.producer(heads_t.input[0]) if heads_t is not None else None
        target = reshape_target(view, reshape, 4)
        if target is None or view.single_user(heads_t.output[0]) is not split or view.single_user(reshape.output[0]) is not heads_t:
            return None
        batch, tokens, heads, width = target
        sizes = split_sizes(view, split)
        head_dim = sizes[0] if sizes and len(set(sizes)) == 1 else (width // 3 if width > 0 else None)
        if heads <= 0 or tokens <= 0 or not head_dim or (width > 0 and width != 3 * head_dim):
            return None
        output = merge_reshape(view, core.values.output[0], [0, 2, 1, 3])
        bias = bias_plan(view, core.bias, heads)
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
                parts = add_split(view, packed, -1, [dim] * 3, f"{hint}/qkv")
            else:
                grouped = add_reshape(view, packed, [batch, tokens, heads, 3, head_dim], f"{hint}/qkv")
                parts = add_split(view, grouped, 3, [1, 1, 1], f"{hint}/qkv")
            q, k, v = (add_reshape(view, part, [batch, tokens, dim], f"{hint}/{n}") for part, n in zip(parts, "qkv"))
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
        key_t = transpose_of(view, core.k, [0, 2, 1])
        squeezes[1] = view.producer(key_t.input[0], "Squeeze") if key_t is not None else None
        if any(s is None for s in squeezes):
            return None
        split = view.producer(squeezes[0].input[0], "Split")
        if (split is None or attribute(split, "axis", 0) != 0 or len(split.output) != 3
                or [s.input[0] for s in squeezes] != list(split.output)):
            return None
        merged = view.producer(split.input[0])
        stacked = reshape_target(view, merged, 4)
        grouped_t = transpose_of(view, merged.input[0], [2, 0, 3, 1, 4]) if stacked is not None else None
        grouped = view.producer(grouped_t.input[0]) if grouped_t is not None else None
        target = reshape_target(view, grouped, 5)
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
            parts = add_split(view, packed, -1, [dim] * 3, f"{hint}/qkv")
            q, k, v = (add_reshape(view, part, [batch, tokens, dim], f"{hint}/{n}") for part, n in zip(parts, "qkv"))
            if others:
                per_head = add_reshape(view, q, [batch, tokens, heads, head_dim], f"{hint}/q_heads")
                moved = view.add_node("Transpose", [per_head], 1, name=f"{hint}/q_heads/Transpose", perm=[0, 2, 1, 3]).output[0]
                rebuilt = add_reshape(view, moved, [-1, tokens, head_dim], f"{hint}/q_heads")
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
    return merge_reshape(view, split_heads.output[0], perm)


def _relpos_bias_plan(view: GraphView, bias: str | None, heads: int, tokens: int) -> Callable[[str], str | None] | None:
    """A B*N x S x T bias (computed from the queries) -> B x N x S x T by a Reshape."""
    if bias is None:
        return lambda hint: None
    shape = view.shape(bias)
    if shape is not None and len(shape) == 4:
        return bias_plan(view, bias, heads)
    if shape is not None and (len(shape) != 3 or shape[1] not in (None, tokens)):
        return None
    producer = view.producer(bias, "Reshape")
    if producer is not None and view.single_user(bias) is not None and reshape_target(view, producer, 3) is not None:
        columns = reshape_target(view, producer, 3)[2]

        def retarget(hint: str) -> str:
            view.set_input(producer, 1, view.add_constant(np.array([-1, heads, tokens, columns], np.int64), f"{hint}/bias_shape"))
            return bias

        return retarget
    columns = shape[2] if shape is not None and shape[2] else -1
    if columns == -1:
        return None
    return lambda hint: add_reshape(view, bias, [-1, heads, tokens, columns], f"{hint}/bias")
