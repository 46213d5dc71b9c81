"""ONNX graph fusions: each exported attention subgraph rewritten into one fused attention node.

    from sammed_edge.kernels.onnx import fuse_attention, verify_fusion

    fused, counts = fuse_attention(model, target="onnxruntime")   # counts per fusion class
    verify_fusion(model, fused)                                    # raises beyond 1e-4 relative

Only onnx and numpy are needed to fuse; onnxruntime / openvino are imported when a check runs on them.
"""

from .attention import (
    ATTENTION,
    ATTENTION_OPSET,
    FUSIONS,
    MHA,
    OPS,
    AttentionFusion,
    CrossAttentionFusion,
    RelPosAttentionFusion,
    WindowAttentionFusion,
)
from .fuse import (
    DISABLE_ENV,
    RECOMMENDED,
    TARGETS,
    count_fused,
    fuse_attention,
    fusion_enabled,
    fusion_guard,
    recommended,
    upgrade_opset,
)
from .verify import BACKENDS, FusionVerificationError, compare_outputs, random_feeds, runner, verify_fusion

__all__ = [
    "ATTENTION",
    "ATTENTION_OPSET",
    "BACKENDS",
    "DISABLE_ENV",
    "FUSIONS",
    "MHA",
    "OPS",
    "RECOMMENDED",
    "TARGETS",
    "AttentionFusion",
    "CrossAttentionFusion",
    "FusionVerificationError",
    "RelPosAttentionFusion",
    "WindowAttentionFusion",
    "compare_outputs",
    "count_fused",
    "fuse_attention",
    "fusion_enabled",
    "fusion_guard",
    "random_feeds",
    "recommended",
    "runner",
    "upgrade_opset",
    "verify_fusion",
]
