"""SAM's predictor interface (`set_image`, `predict`) over any image encoder and prompt decoder.

`PromptPredictor` owns everything between the user's arrays and the two networks: validation, preprocessing,
prompt transforms, candidate selection and mask post-processing, all through `processing`. A concrete predictor
only says how to run the encoder and the decoder (`_encode`, `_decode`), so the PyTorch reference predictor and
the runtime's backends return the same masks for the same network.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import processing
from .errors import InputError
from .processing import ImageGeometry, ProcessingPolicy


class PromptPredictor:
    """Base predictor: subclasses implement `_encode` and `_decode`.

    Args:
        policy: the model family's processing policy.
    """

    def __init__(self, policy: ProcessingPolicy) -> None:
        self.policy = policy
        self._embedding: Any = None
        self._geometry: ImageGeometry | None = None

    # -- to implement -------------------------------------------------------------------------------------
    def _encode(self, image_tensor: np.ndarray) -> Any:
        """Run the image encoder on a 1 x 3 x S x S float32 tensor; returns the embedding (any type)."""
        raise NotImplementedError

    def _decode(self, embedding: Any, inputs: dict[str, np.ndarray], multimask_output: bool) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompt decoder.

        Args:
            embedding: what `_encode` returned.
            inputs: `processing.decoder_inputs(...)` (SAM's ONNX decoder inputs, model frame).
            multimask_output: return the multimask candidates (tokens 1..) instead of the single mask (token 0).

        Returns:
            low_res_logits C x L x L float32, iou_predictions (C,) float32.
        """
        raise NotImplementedError

    # -- SAM's interface ----------------------------------------------------------------------------------
    @property
    def is_image_set(self) -> bool:
        return self._geometry is not None

    @property
    def original_size(self) -> tuple[int, int]:
        """(H, W) of the current image."""
        if self._geometry is None:
            raise InputError("no image set: call set_image(image) first")
        return self._geometry.original_size

    def set_image(self, image: np.ndarray) -> None:
        """Encode an image for the following `predict` calls.

        Args:
            image: H x W or H x W x 3 uint8 RGB array.
        """
        tensor, geometry = processing.preprocess_image(image, self.policy)
        self._embedding = self._encode(tensor)
        self._geometry = geometry

    def reset_image(self) -> None:
        self._embedding = None
        self._geometry = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        best_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment the current image from prompts in original-image pixels.

        Args:
            point_coords: N x 2 (x, y) pixel coordinates.
            point_labels: N labels, 1 foreground / 0 background.
            box: (x0, y0, x1, y1) in pixels.
            mask_input: L x L low-res mask prompt (L = policy.low_res_size), e.g. from a previous call's
                `low_res_logits` through `processing.mask_prompt_from_logits`; passed to the model as given.
            multimask_output: return every multimask candidate the decoder emits (3 for SAM's decoder)
                instead of its single-mask output.
            return_logits: return full-resolution float32 logits instead of boolean masks.
            best_only: keep only the candidate with the highest predicted IoU (SAM-Med2D's own predictor).

        Returns:
            masks: C x H x W bool (float32 logits with return_logits).
            iou_predictions: (C,) float32.
            low_res_logits: C x L x L float32.
        """
        if self._geometry is None:
            raise InputError("no image set: call set_image(image) first")
        prompts = processing.check_prompts(self._geometry, self.policy, point_coords, point_labels, box, mask_input)
        inputs = processing.decoder_inputs(prompts, self._geometry, self.policy)
        low_res, iou = self._decode(self._embedding, inputs, bool(multimask_output))
        low_res = np.asarray(low_res, dtype=np.float32)
        iou = np.asarray(iou, dtype=np.float32)
        if best_only and low_res.shape[0] > 1:
            best = int(np.argmax(iou))
            low_res, iou = low_res[best : best + 1], iou[best : best + 1]
        logits = processing.postprocess_logits(low_res, self._geometry, self.policy)
        masks = logits if return_logits else logits > self.policy.mask_threshold
        return masks, iou, low_res
