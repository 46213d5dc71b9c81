"""Torch-free runtime: numpy pre/post-processing and SAM's predictor interface over an inference backend."""

from .errors import InputError
from .processing import FAMILY_POLICIES, ImageGeometry, ProcessingPolicy, family_policy
from .predictor import PromptPredictor

__all__ = ["FAMILY_POLICIES", "ImageGeometry", "InputError", "ProcessingPolicy", "PromptPredictor", "family_policy"]
