"""A small editable view of an ONNX graph for pattern rewrites: producers, consumers, constants, static shapes.

Only the main graph is indexed (our exported graphs have no control-flow subgraphs). Edits go straight into the
`onnx.ModelProto`; call `refresh()` after structural edits and `finish()` once at the end to restore a topological
node order and drop what the rewrite left dead.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


class GraphView:
    """Index of one model's main graph.

    Args:
        model: the model to edit in place.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self._names = itertools.count()
        self._shapes: dict[str, list[int | None]] = {}
        self._types: dict[str, int] = {}
        self._infer_shapes()
        self.refresh()

    # ------------------------------------------------------------------ indexing
    def refresh(self) -> None:
        """Rebuild producer / consumer maps after nodes were added or removed."""
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.outputs = {out.name for out in self.graph.output}

    def _infer_shapes(self) -> None:
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - shapes are a hint; patterns fall back to constants without them
            return
        infos = itertools.chain(inferred.graph.value_info, inferred.graph.input, inferred.graph.output)
        for info in infos:
            tensor = info.type.tensor_type
            if not tensor.HasField("elem_type"):
                continue
            self._types[info.name] = tensor.elem_type
            if tensor.HasField("shape"):
                self._shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        for init in self.model.graph.initializer:
            self._shapes[init.name] = list(init.dims)
            self._types[init.name] = init.data_type

    def producer(self, name: str, op_type: str | Sequence[str] | None = None) -> onnx.NodeProto | None:
        """The node writing `name` (None for graph inputs / initializers, or when its op type differs)."""
        node = self.producers.get(name)
        if node is None or op_type is None:
            return node
        wanted = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        return node if node.op_type in wanted else None

    def users(self, name: str) -> list[onnx.NodeProto]:
        return self.consumers.get(name, [])

    def single_user(self, name: str) -> onnx.NodeProto | None:
        """The only consumer of `name`, when it has exactly one and is not a graph output."""
        users = self.users(name)
        if len(users) != 1 or name in self.outputs:
            return None
        return users[0]

    def constant(self, name: str) -> np.ndarray | None:
        """Value of an initializer or `Constant` node output, else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.array(helper.get_attribute_value(attr))
                if attr.name in ("value_floats", "value_ints"):
                    return np.array(helper.get_attribute_value(attr))
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(()))

    def ints(self, name: str) -> list[int] | None:
        value = self.constant(name)
        if value is None or value.dtype.kind not in "iu" or value.ndim != 1:
            return None
        return [int(v) for v in value]

    def shape(self, name: str) -> list[int | None] | None:
        """Static shape from shape inference (None entries for symbolic dims), None when unknown."""
        return self._shapes.get(name)

    def elem_type(self, name: str) -> int | None:
        return self._types.get(name)

    # ------------------------------------------------------------------ editing
    def fresh(self, hint: str) -> str:
        """A tensor / node name not used in the graph yet."""
        taken = set(self.producers) | set(self.initializers) | {i.name for i in self.graph.input}
        while True:
            name = f"{hint}_{next(self._names)}"
            if name not in taken and name not in self.consumers:
                return name

    def add_constant(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.initializers[name] = self.graph.initializer[-1]
        self._shapes[name] = list(array.shape)
        return name

    def add_node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | int = 1, name: str = "",
                 domain: str = "", **attrs) -> onnx.NodeProto:
        """Append a node (order is restored by `finish`); `outputs` may be a count of fresh names."""
        node_name = self.fresh(name or op_type)
        if isinstance(outputs, int):
            outputs = [self.fresh(f"{node_name}_output") for _ in range(outputs)]
        node = self.graph.node.add()  # the stored message itself, so later edits reach the graph
        node.CopyFrom(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, domain=domain or None, **attrs))
        for out in node.output:
            self.producers[out] = node
        for inp in node.input:
            if inp:
                self.consumers.setdefault(inp, []).append(node)
        return node

    def set_input(self, node: onnx.NodeProto, index: int, name: str) -> None:
        """Point input `index` of `node` at tensor `name`, keeping the consumer map current."""
        old = node.input[index]
        if old:
            users = self.consumers.get(old, [])
            for position, user in enumerate(users):
                if user is node:
                    del users[position]
                    break
        node.input[index] = name
        if name:
            self.consumers.setdefault(name, []).append(node)

    def ensure_opset(self, domain: str, version: int) -> None:
        for opset in self.model.opset_import:
            if opset.domain == domain:
                opset.version = max(opset.version, version)
                return
        self.model.opset_import.append(helper.make_opsetid(domain, version))

    def opset(self, domain: str = "") -> int:
        for opset in self.model.opset_import:
            if opset.domain in ((domain, "ai.onnx") if domain == "" else (domain,)):
                return opset.version
        return 0

    def finish(self, touched: Iterable[onnx.NodeProto]) -> int:
        """Remove nodes made dead by a rewrite (starting from `touched`, cascading to their producers), drop
        initializers nobody reads any more, and restore a topological order. Returns the number of nodes removed."""
        self.refresh()
        dead: set[int] = set()
        pending = list(touched)
        while pending:
            node = pending.pop()
            if id(node) in dead:
                continue
            if any(out in self.outputs or any(id(u) not in dead for u in self.users(out)) for out in node.output if out):
                continue
            dead.add(id(node))
            pending.extend(p for p in (self.producers.get(i) for i in node.input if i) if p is not None)
        kept = [node for node in self.graph.node if id(node) not in dead]
        removed = len(self.graph.node) - len(kept)
        read = {i for node in kept for i in node.input} | self.outputs
        unused = [init for init in self.graph.initializer if init.name not in read]
        for init in unused:
            self.graph.initializer.remove(init)
        _replace_nodes(self.graph, _topological(kept, {i.name for i in self.graph.input} | {i.name for i in self.graph.initializer}))
        self.refresh()
        return removed


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Topological order that keeps the given order wherever the data flow allows (Kahn's algorithm by position)."""
    producer = {out: index for index, node in enumerate(nodes) for out in node.output}
    waiting = [0] * len(nodes)
    dependents: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        sources = {producer[i] for i in node.input if i and i not in available and i in producer}
        waiting[index] = len(sources)
        for source in sources:
            dependents.setdefault(source, []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(nodes[index])
        for dependent in dependents.get(index, []):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(ordered) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return ordered


def _replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default
