"""Torch-free runtime: numpy pre/post-processing and SAM's predictor interface over an inference backend."""

from .errors import InputError
from .predictor import Predictor, PromptPredictor
from .processing import FAMILY_POLICIES, ImageGeometry, ProcessingPolicy, family_policy

__all__ = ["FAMILY_POLICIES", "ImageGeometry", "InputError", "Predictor", "ProcessingPolicy", "PromptPredictor", "family_policy"]
