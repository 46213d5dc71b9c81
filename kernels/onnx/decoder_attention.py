r"""The prompt decoder's attention fusion: the two-way transformer's self and cross attentions with separate
q / k / v projections (`CrossAttentionFusion`, SAM's decoder), built on `attention_core.AttentionFusion`.
"""

from __future__ import annotations

from .attention_core import (
    AttentionFusion,
    Core,
    Plan,
    add_reshape,
    bias_plan,
    merge_reshape,
    reshape_target,
    transpose_of,
)
from .graph import GraphView


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
            transpose = transpose_of(view, name, perm)
            reshape = view.producer(transpose.input[0]) if transpose is not None else None
            target = reshape_target(view, reshape, 4)
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
        output = merge_reshape(view, core.values.output[0], [0, 2, 1, 3])
        bias = bias_plan(view, core.bias, heads_n)
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
                    names.append(add_reshape(view, source, [target[0], target[1], dim], f"{hint}/{part}"))
            return names[0], names[1], names[2], bias(hint)

        return Plan(heads_n, build, output, [n for s in sources for n in s[:2]])
