"""PyTorch model zoo: SAM-Med2D, LiteMedSAM and SAM, one module per network part."""

from .checkpoints import CheckpointError, fetch_lite_medsam, read_checkpoint
from .registry import (
    MODELS,
    ConfigError,
    build_model,
    infer_config,
    list_models,
    load_model,
    model_from_config,
    normalize_config,
)
from .sam import SamModel

__all__ = [
    "MODELS",
    "CheckpointError",
    "ConfigError",
    "SamModel",
    "build_model",
    "fetch_lite_medsam",
    "infer_config",
    "list_models",
    "load_model",
    "model_from_config",
    "normalize_config",
    "read_checkpoint",
]
