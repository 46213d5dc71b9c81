"""SAM's prompt encoder: points and boxes to sparse tokens, a low-res mask to a dense embedding."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d, activation


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates.

    The 2 x F Gaussian matrix is a persistent buffer (part of checkpoints).
    """

    def __init__(self, num_pos_feats: int = 64, scale: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords in [0, 1] (..., 2) -> (..., 2F) [sin | cos]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the centres of an h x w grid: 2F x h x w."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        coords = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=-1)
        return self._encode(coords).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode B x N x 2 pixel coordinates (x, y) of an image of size (H, W)."""
        x = coords[..., 0] / image_size[1]
        y = coords[..., 1] / image_size[0]
        return self._encode(torch.stack([x, y], dim=-1).to(torch.float32))


class PromptEncoder(nn.Module):
    """Embeds prompts for SAM's mask decoder.

    Args:
        embed_dim: token width.
        image_embedding_size: (h, w) of the image embedding.
        input_image_size: (H, W) of the model input, the frame of point coordinates.
        mask_in_chans: hidden channels of the mask downscaler; the mask prompt is 4h x 4w.
        act: activation of the mask downscaler.
    """

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        act: str = "GELU",
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0 background point, 1 foreground point, 2 box top-left, 3 box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])
        act_cls = activation(act)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            act_cls(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            act_cls(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: 1 x C x h x w."""
        return self.pe_layer.grid(self.image_embedding_size)[None]

    def embed_labelled_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse tokens of labelled points, SAM's ONNX convention.

        Args:
            coords: B x N x 2 (x, y) in the model-input frame.
            labels: B x N; 1 foreground, 0 background, 2 / 3 box corners, -1 padding (no position).

        Returns:
            B x N x embed_dim.
        """
        pe = self.pe_layer.forward_with_coords(coords + 0.5, self.input_image_size)
        labels = labels[..., None]
        pe = torch.where(labels == -1, torch.zeros_like(pe), pe)
        pe = pe + (labels == -1).to(pe.dtype) * self.not_a_point_embed.weight
        for label, table in enumerate(self.point_embeddings):
            pe = pe + (labels == label).to(pe.dtype) * table.weight
        return pe

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """B x 1 x 4h x 4w mask prompt -> B x C x h x w."""
        return self.mask_downscaling(masks)

    def blend_mask_prompt(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        """Dense embedding of SAM's ONNX mask inputs without a branch: B x 1 x 4h x 4w, B (0 or 1) -> B x C x h x w,
        or with `tokens` B x h w x C (switched to tokens right after the last convolution)."""
        masks = self.embed_masks(mask_input)
        if tokens:
            masks = masks.permute(0, 2, 3, 1).flatten(1, 2)
            weight, no_mask = has_mask_input.reshape(-1, 1, 1), self.no_mask_embed.weight.reshape(1, 1, -1)
        else:
            weight, no_mask = has_mask_input.reshape(-1, 1, 1, 1), self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return weight * masks + (1 - weight) * no_mask

    def no_mask_dense(self, batch: int) -> torch.Tensor:
        """Dense embedding when there is no mask prompt: B x C x h x w."""
        height, width = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's interface: (coords B x N x 2, labels B x N) points, B x 4 boxes, B x 1 x 4h x 4w masks.

        Returns:
            sparse B x T x C (points, a padding point when there is no box, then box corners), dense B x C x h x w.
        """
        given = [t for t in (points[0] if points is not None else None, boxes, masks) if t is not None]
        batch = given[0].shape[0] if given else 1
        device = self.no_mask_embed.weight.device
        coords = [torch.empty((batch, 0, 2), device=device)]
        labels = [torch.empty((batch, 0), device=device)]
        if points is not None:
            coords.append(points[0].to(torch.float32))
            labels.append(points[1].to(torch.float32))
            if boxes is None:
                coords.append(torch.zeros((batch, 1, 2), device=device))
                labels.append(-torch.ones((batch, 1), device=device))
        if boxes is not None:
            coords.append(boxes.reshape(batch, 2, 2).to(torch.float32))
            labels.append(torch.tensor([[2.0, 3.0]], device=device).expand(batch, 2))
        sparse = self.embed_labelled_points(torch.cat(coords, dim=1), torch.cat(labels, dim=1))
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(batch)
        return sparse, dense
