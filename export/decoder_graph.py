"""The prompt decoder's export wrapper in SAM's own form, and the settings every decoder form shares.

`DecoderGraph` takes the decoder contract's inputs (`runtime.contract.decoder_contract`) and returns every mask
token; `factored_decoder.FactoredDecoderGraph` subclasses it and `graphs` exports and verifies both. The embedding
layouts and softmax placements live here, below both, so the two forms import one way: graphs -> factored_decoder
-> decoder_graph.
"""

from __future__ import annotations

import torch
from torch import nn

from sammed_edge.runtime import contract as io_contract

from .models.sam import SamModel

# how the embedding passes from encoder to decoder (runtime.contract.EMBEDDING_LAYOUTS): SAM's "nchw", or "tokens"
# (1 x h w x C), which spares the decoder's transpose of the whole embedding on every click
EMBEDDING_LAYOUTS = io_contract.EMBEDDING_LAYOUTS
DEFAULT_EMBEDDING_LAYOUT = "nchw"
# where the factored decoder's token -> image attentions normalise their softmax: "inside" (between the two
# products, as SAM writes it) or "after" (the second product's rows divided by the sums: the same sums). OpenVINO's
# CPU plugin fuses the "inside" pattern into one attention node that ran 0.76-0.89 ms per attention, where the
# unfused products had taken 0.18-0.20 ms each (docs/exporters.md#embedding-layout)
SOFTMAX_PLACEMENTS = ("inside", "after")
DEFAULT_SOFTMAX = "inside"


class DecoderGraph(nn.Module):
    """SAM-convention prompt decoder returning every mask token (see `runtime.contract.decoder_contract`); its
    image embedding comes in `layout` (EMBEDDING_LAYOUTS)."""

    def __init__(self, model: SamModel, layout: str = DEFAULT_EMBEDDING_LAYOUT) -> None:
        super().__init__()
        self.layout = io_contract.check_embedding_layout(layout)
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder
        # The grid's positional encoding is a constant: store it instead of recomputing sin/cos per click.
        self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe().detach().clone(), persistent=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.prompt_encoder.embed_labelled_points(point_coords, point_labels)
        dense = self.prompt_encoder.blend_mask_prompt(mask_input, has_mask_input)
        if self.layout == "tokens":
            height, width = self.dense_pe.shape[-2:]
            image_embeddings = image_embeddings.transpose(1, 2).reshape(1, -1, height, width)
        return self.decode(image_embeddings, sparse, dense)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """1 x C x h x w embedding, 1 x N x C prompt tokens, 1 x C x h x w dense prompt -> (iou 1 x M, masks 1 x M x 4h x 4w)."""
        masks, iou = self.mask_decoder.predict_masks(image_embeddings, self.dense_pe, sparse, dense)
        return iou, masks

