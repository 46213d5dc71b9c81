"""TorchPredictor: SAM's predictor interface over a PyTorch model, the reference every export is checked against."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sammed_edge.runtime.predictor import PromptPredictor

from .models.sam import SamModel


class TorchPredictor(PromptPredictor):
    """Reference predictor: `set_image(image)`, then `predict(...)` as in SAM.

    Pre/post-processing is the runtime's numpy code (`sammed_edge.runtime.processing`) with the model's family
    policy, so results equal those of an exported bundle up to the networks' numerics.

    Args:
        model: a `SamModel` (put in eval mode here).
        device: torch device to run on (default: the model's).
    """

    def __init__(self, model: SamModel, device: str | torch.device | None = None) -> None:
        super().__init__(model.processing_policy())
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @property
    def embedding(self) -> torch.Tensor:
        """1 x C x h x w embedding of the current image."""
        return self._current()[0]

    @torch.inference_mode()
    def _encode(self, image_tensor: np.ndarray) -> torch.Tensor:
        return self.model.encode(torch.from_numpy(image_tensor).to(self.device))

    @torch.inference_mode()
    def _decode(self, embedding: Any, inputs: dict[str, np.ndarray], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(inputs[name]).to(self.device)

        mask = tensor("mask_input") if inputs["has_mask_input"][0] > 0 else None
        low_res, iou = self.model.decode(embedding, tensor("point_coords"), tensor("point_labels"), mask, multimask_output)
        return low_res[0].float().cpu().numpy(), iou[0].float().cpu().numpy()
