"""The composite model: image encoder, prompt encoder and mask decoder of one family."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sammed_edge.runtime.processing import ProcessingPolicy, family_policy

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class SamModel(nn.Module):
    """SAM-style promptable segmentation model.

    Args:
        image_encoder: B x 3 x S x S image -> B x C x h x w embedding.
        prompt_encoder: the prompt encoder.
        mask_decoder: the mask decoder.
        family: "sam_med2d", "lite_medsam" or "sam"; decides preprocessing (see `processing_policy`).
        config: the canonical configuration the model was built from (see `registry.normalize_config`).
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, family: str, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.family = family
        self.config = config or {}

    @property
    def image_size(self) -> int:
        return int(self.image_encoder.img_size)

    @property
    def low_res_size(self) -> int:
        return int(self.prompt_encoder.mask_input_size[0])

    def processing_policy(self) -> ProcessingPolicy:
        """The family's pre/post-processing, sized for this model."""
        overrides: dict[str, Any] = {"input_size": self.image_size, "low_res_size": self.low_res_size}
        if "pixel_mean" in self.config:
            overrides["pixel_mean"] = tuple(self.config["pixel_mean"])
            overrides["pixel_std"] = tuple(self.config["pixel_std"])
        return family_policy(self.family, **overrides)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x S x S preprocessed images -> B x C x h x w embeddings."""
        return self.image_encoder(images)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt decoder in SAM's ONNX convention.

        Args:
            image_embeddings: 1 x C x h x w (or B x C x h x w).
            point_coords: B x N x 2 model-frame (x, y), box corners included.
            point_labels: B x N; 1 fg, 0 bg, 2/3 box corners, -1 padding.
            mask_input: B x 1 x 4h x 4w mask prompt or None.
            multimask_output: multimask candidates instead of the single mask.

        Returns:
            low-res logits B x K x 4h x 4w, IoU predictions B x K.
        """
        sparse = self.prompt_encoder.embed_labelled_points(point_coords, point_labels)
        batch = sparse.shape[0]
        if mask_input is not None:
            dense = self.prompt_encoder.embed_masks(mask_input)
        else:
            dense = self.prompt_encoder.no_mask_dense(batch)
        return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)
