"""Driver of the attention fusions: which fused operator each backend gets, when fusion applies, and the switch.

    fused, counts = fuse_attention(onnx.load("encoder.onnx"), target="onnxruntime")
    # counts == {"WindowAttentionFusion": 10, "RelPosAttentionFusion": 0, "CrossAttentionFusion": 0}

The input model is never modified; the unfused graph stays the reference (`verify_fusion` compares the two) and
the product's default where fusion is not faster (`RECOMMENDED`, measured by `export/studies/compare_fusion.py`).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import onnx
from onnx import version_converter

from .attention import ATTENTION, ATTENTION_OPSET, FUSIONS, MHA, OPS, AttentionFusion

log = logging.getLogger(__name__)

#: Set to 1 to turn every attention fusion off (fuse_attention then returns the graph unchanged).
DISABLE_ENV = "SAMMED_EDGE_DISABLE_ONNX_FUSION"

#: The fused operator each backend runs: onnxruntime's contrib MultiHeadAttention (any opset) or the standard
#: Attention (opset 23; graphs are converted up from our opset 17). OpenVINO reads both.
TARGETS: dict[str, str] = {"onnxruntime": MHA, "openvino": MHA}

#: The fused operator the product uses by default, per backend and graph, or None to keep the graph unfused:
#: measured by `python -m sammed_edge.export.studies.compare_fusion` (docs/fusion.md). The standard Attention beat the
#: unfused encoders by 3-4 % on both runtimes and onnxruntime's decoder by 4 %; OpenVINO's decoder ran no faster
#: fused (median ratio 1.01-1.03), so it stays unfused.
RECOMMENDED: dict[str, dict[str, str | None]] = {
    "onnxruntime": {"encoder": ATTENTION, "decoder": ATTENTION},
    "openvino": {"encoder": ATTENTION, "decoder": None},
}


def fusion_enabled() -> bool:
    """False when the environment switch `SAMMED_EDGE_DISABLE_ONNX_FUSION=1` turns fusion off."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def recommended(target: str, graph: str) -> str | None:
    """The fused operator to use for `graph` ("encoder" / "decoder") on `target`, or None: keep it unfused (not
    measured faster there, or the switch is set)."""
    if target not in RECOMMENDED or graph not in RECOMMENDED[target]:
        raise ValueError(f"no measurement for {target!r} / {graph!r}; known: "
                         + ", ".join(f"{t}/{g}" for t, parts in RECOMMENDED.items() for g in parts))
    return RECOMMENDED[target][graph] if fusion_enabled() else None


def fusion_guard(model: onnx.ModelProto, target: str = "onnxruntime", op: str | None = None) -> str | None:
    """Why attention fusion does not apply to `model` for `target` (None: it applies).

    Fusion applies to float graphs of the standard domain at opset 13 or newer (`Softmax` over the last axis,
    Split sizes as inputs) that contain at least one Softmax, unless the switch turns it off. The standard
    Attention operator also needs the graph convertible to opset 23 (no opset above it).
    """
    if not fusion_enabled():
        return f"{DISABLE_ENV} is set"
    if target not in TARGETS:
        return f"unknown target {target!r}; choose from {sorted(TARGETS)}"
    op = op or TARGETS[target]
    if op not in OPS:
        return f"unknown fused operator {op!r}; choose from {OPS}"
    opset = _opset(model)
    if opset < 13:
        return f"opset {opset} is older than 13"
    if op == ATTENTION and opset > ATTENTION_OPSET:
        return f"opset {opset} is newer than {ATTENTION_OPSET}"
    if not any(node.op_type == "Softmax" for node in model.graph.node):
        return "no Softmax: the graph has no attention"
    return None


def upgrade_opset(model: onnx.ModelProto, version: int = ATTENTION_OPSET) -> onnx.ModelProto:
    """Copy of `model` converted to opset `version` with onnx's version converter (e.g. ReduceMean's axes move
    from attribute to input at 18). Raises `ValueError` when the converter cannot."""
    if _opset(model) >= version:
        return _copy(model)
    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors of several kinds
        raise ValueError(f"cannot convert the graph from opset {_opset(model)} to {version}: {exc}") from exc


def fuse_attention(
    model: onnx.ModelProto,
    target: str = "onnxruntime",
    op: str | None = None,
    fusions: Sequence[type[AttentionFusion]] = FUSIONS,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Rewrite every recognised attention subgraph of `model` into one fused node.

    Args:
        model: an exported graph (not modified).
        target: backend the graph is for ("onnxruntime" or "openvino"); picks the fused operator.
        op: override the operator: "MultiHeadAttention" (com.microsoft) or "Attention" (standard, opset 23; the
            graph is converted up when something was fused).
        fusions: fusion classes to try, in order; each subgraph is fused by the first that matches.

    Returns:
        (graph, counts): a fused copy of `model` (an unchanged copy when nothing applies: see `fusion_guard`)
        and the number of fused nodes each fusion class produced, by class name.
    """
    counts = {fusion.__name__: 0 for fusion in fusions}
    reason = fusion_guard(model, target, op)
    if reason is not None:
        log.info("attention fusion skipped: %s", reason)
        return _copy(model), counts
    op = op or TARGETS[target]
    fused = upgrade_opset(model) if op == ATTENTION else _copy(model)
    for fusion in fusions:
        counts[fusion.__name__] = fusion(op).apply(fused)
    if not any(counts.values()):
        return _copy(model), counts
    onnx.checker.check_model(fused)
    log.info("fused attention for %s (%s): %s", target, op, counts)
    return fused, counts


def count_fused(model: onnx.ModelProto) -> dict[str, int]:
    """Fused attention nodes already in `model`, by operator type."""
    counts = {op: 0 for op in OPS}
    for node in model.graph.node:
        if node.op_type == MHA and node.domain == "com.microsoft":
            counts[MHA] += 1
        elif node.op_type == ATTENTION and node.domain in ("", "ai.onnx"):
            counts[ATTENTION] += 1
    return counts


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
