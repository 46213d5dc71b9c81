"""The prompt decoder graph with its image-sized products reordered: same contract and outputs, ~40 % of the FLOPs.

SAM's decoder spends its time where prompt tokens (T of them: 5 output tokens plus the prompt points) meet the N
image tokens (N = h x w, 4096 for LiteMedSAM's 64 x 64 grid). Written plainly, every cross-attention first projects
all N image tokens to the attention width D (two N x C x D products), although only T tokens sit on the other
side. With H heads of width d = D / H, the same numbers come from products whose inner size is H x T instead:

token -> image (T queries q_h, keys and values from the image x, N x C):
    scores_h = q_h (x W_kh^T + b_kh)^T = (q_h W_kh) x^T + (q_h b_kh)       the last term is the same for every
                                                                           image token: softmax drops it
    out_h    = P_h (x W_vh^T + b_vh) = (P_h x) W_vh^T + b_vh                  rows of P_h sum to 1
    (P_h x may also be computed as (E_h x) / rowsum(E_h), E_h = exp(scores_h - rowmax): the softmax normalised
    after the product, SOFTMAX_PLACEMENTS)
image -> token (N queries from the image x, keys k_h and values v_h from the T tokens):
    scores_h = (x W_qh^T + b_qh) k_h^T = x (W_qh^T k_h^T) + b_qh k_h^T
    out      = sum_h A_h v_h W_oh^T + b_o = [A_1 .. A_H] [v_1 W_o1^T; ..; v_H W_oH^T] + b_o

Each attention then costs 2 x N x C x (H T) multiply-adds instead of 2 x N x C x D, i.e. 117 M instead of 268 M
for one click on LiteMedSAM (T = 7, H T = 56 against D = 128); the five cross-attentions are the decoder's bulk.
The saving shrinks as prompts grow and turns into a loss once H T exceeds D, i.e. T > 16 tokens: more than 10
points (with the padding point) or more than 9 points and a box. Clicks rarely go that far.

The upscaling path runs channels-last: a 2 x 2, stride-2 transposed convolution is one linear map per input
position, so each is a matrix product (bias included, one per output row offset) whose rows land in the upsampled
grid's order. The first one's two products are joined by a concat into the 2h x 2w grid and its LayerNorm runs over
the last axis. The second one never joins its 4h x 4w feature map into one tensor: each row offset's product goes through
its GELU straight into the (masks x channels) @ (channels x pixels) product, and only the M small masks are
interleaved. Keeping the bias inside each product also stops onnxruntime from fusing it into a BiasGelu, whose
kernel profiled about four times slower per value than its plain Gelu.

In the tokens embedding layout (`decoder_graph.EMBEDDING_LAYOUTS`) the graph takes the embedding as N x C tokens, and the
mask prompt's convolutions switch to tokens right after their last one: no image-sized tensor is transposed.

Everything is exact algebra: `graphs.verify_decoder` checks the exported graph against `decoder_graph.DecoderGraph`'s
PyTorch forward at fp32 tolerance. The graph takes batch 1, as the decoder contract says.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .decoder_graph import SOFTMAX_PLACEMENTS, DecoderGraph
from .models.sam import SamModel
from .models.transformer import Attention


def _head_rows(linear: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear C -> D as per-head weights H x d x C and biases H x d."""
    width, channels = linear.weight.shape
    return linear.weight.reshape(heads, width // heads, channels), linear.bias.reshape(heads, width // heads)


def token_to_image(attn: Attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, softmax: str = "inside") -> torch.Tensor:
    """`attn(queries, keys, values)` for T token queries over N image tokens, in O(N C H T).

    Args:
        queries: T x C prompt tokens (with their positional encoding).
        keys: N x C image tokens with their positional encoding; values: N x C image tokens.
        softmax: "inside", a softmax between the two products, or "after", its normalisation after the second
            product (decoder_graph.SOFTMAX_PLACEMENTS).

    Returns:
        T x C.
    """
    heads = attn.num_heads
    q = attn.q_proj(queries)
    tokens, width = q.shape
    head_dim = width // heads
    w_k, _ = _head_rows(attn.k_proj, heads)
    channels = w_k.shape[2]
    q_k = torch.bmm(q.reshape(tokens, heads, head_dim).transpose(0, 1), w_k) / math.sqrt(head_dim)  # H x T x C
    scores = q_k.reshape(heads * tokens, channels) @ keys.T  # H T x N
    if softmax == "after":
        weights = torch.exp(scores - scores.amax(-1, keepdim=True))
        pooled = (weights @ values) / weights.sum(-1, keepdim=True)
    else:
        pooled = torch.softmax(scores, dim=-1) @ values
    pooled = pooled.reshape(heads, tokens, channels)
    w_v, b_v = _head_rows(attn.v_proj, heads)
    out = torch.bmm(pooled, w_v.transpose(1, 2)) + b_v[:, None, :]  # H x T x d
    return attn.out_proj(out.transpose(0, 1).reshape(tokens, width))


def image_to_token(attn: Attention, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """`attn(queries, keys, values)` for N image-token queries over T prompt tokens, in O(N C H T).

    Args:
        queries: N x C image tokens with their positional encoding.
        keys: T x C prompt tokens with their positional encoding; values: T x C prompt tokens.

    Returns:
        N x C.
    """
    heads = attn.num_heads
    k = attn.k_proj(keys)
    v = attn.v_proj(values)
    tokens, width = k.shape
    head_dim = width // heads
    k_h = k.reshape(tokens, heads, head_dim).transpose(0, 1)  # H x T x d
    w_q, b_q = _head_rows(attn.q_proj, heads)
    channels = w_q.shape[2]
    scale = 1 / math.sqrt(head_dim)
    # elementwise product + sum for the bias term: OpenVINO's bf16 matmul rejects a product with one output column
    score_w = torch.bmm(k_h, w_q).reshape(heads * tokens, channels) * scale  # H T x C
    score_b = (k_h * b_q[:, None, :]).sum(-1).reshape(heads * tokens) * scale
    points = queries.shape[0]
    probs = torch.softmax((queries @ score_w.T + score_b).reshape(points, heads, tokens), dim=-1)
    w_o = attn.out_proj.weight.reshape(channels, heads, head_dim).permute(1, 2, 0)  # H x d x C
    mixed = torch.bmm(v.reshape(tokens, heads, head_dim).transpose(0, 1), w_o).reshape(heads * tokens, channels)
    return probs.reshape(points, heads * tokens) @ mixed + attn.out_proj.bias


class FactoredDecoderGraph(DecoderGraph):
    """`decoder_graph.DecoderGraph` (same inputs, prompt embedding and outputs) with its decoding computed as the module
    docstring explains; `softmax` is one of SOFTMAX_PLACEMENTS."""

    def __init__(self, model: SamModel, layout: str = "nchw", softmax: str = "inside") -> None:
        super().__init__(model, layout)
        if softmax not in SOFTMAX_PLACEMENTS:
            raise ValueError(f"unknown softmax placement {softmax!r}; choose from {SOFTMAX_PLACEMENTS}")
        self.softmax = softmax
        self.grid = tuple(model.prompt_encoder.image_embedding_size)
        # persistent: exported as one initializer that every layer reads, not a constant copied per use
        self.register_buffer("key_pe", self.dense_pe.flatten(2)[0].T.contiguous())  # N x C

    def _upscale_masks(self, image_tokens: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """N x C image tokens, M x c2 hypernetwork weights -> 1 x M x 4h x 4w mask logits."""
        up1, norm, act1, up2, act2 = self.mask_decoder.output_upscaling
        height, width = self.grid
        channels = image_tokens.shape[1]
        c1, c2, masks = up1.weight.shape[1], up2.weight.shape[1], hyper.shape[0]
        # per output row offset: C -> (column offset, c1), the bias inside the product so it fuses into the GEMM
        w1, b1 = up1.weight.permute(2, 0, 3, 1), up1.bias.repeat(2)  # row offset x C x column offset x c1
        x = torch.cat([(image_tokens @ w1[r].reshape(channels, 2 * c1) + b1).reshape(height, 1, 2 * width * c1) for r in range(2)], 1)
        x = act1(F.layer_norm(x.reshape(4 * height * width, c1), (c1,), norm.weight, norm.bias, norm.eps))  # 2h x 2w grid
        # second upscaling: each row offset goes straight to its M x 2h x 4w masks; the rows interleave on the small masks
        w2, b2 = up2.weight.permute(2, 0, 3, 1), up2.bias.repeat(2)
        rows = [hyper @ act2(x @ w2[r].reshape(c1, 2 * c2) + b2).reshape(8 * height * width, c2).T for r in range(2)]
        return torch.cat([m.reshape(masks, 2 * height, 1, 4 * width) for m in rows], 2).reshape(1, masks, 4 * height, 4 * width)

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.layout == "nchw":
            return super().forward(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        # tokens layout: the mask prompt's embedding comes as tokens too and is added to the 1 x N x C embedding as
        # it comes, so no image-sized tensor is transposed
        sparse = self.prompt_encoder.embed_labelled_points(point_coords, point_labels)
        dense = self.prompt_encoder.blend_mask_prompt(mask_input, has_mask_input, tokens=True)
        return self.decode_tokens((image_embeddings + dense)[0], sparse)

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        channels = image_embeddings.shape[1]
        return self.decode_tokens((image_embeddings + dense).reshape(channels, -1).T, sparse)

    def decode_tokens(self, keys: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N x C image tokens (embedding plus dense prompt, channels-last), 1 x T x C prompt tokens -> (iou 1 x M,
        masks 1 x M x 4h x 4w)."""
        decoder = self.mask_decoder
        transformer = decoder.transformer
        token_pe = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, sparse[0]], 0)  # T x C
        queries = token_pe
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(queries[None], queries[None], queries[None])[0]
            else:
                q = queries + token_pe
                queries = queries + layer.self_attn(q[None], q[None], queries[None])[0]
            queries = layer.norm1(queries)
            k = keys + self.key_pe
            attended = token_to_image(layer.cross_attn_token_to_image, queries + token_pe, k, keys, self.softmax)
            queries = layer.norm2(queries + attended)
            queries = layer.norm3(queries + layer.mlp(queries))
            keys = layer.norm4(keys + image_to_token(layer.cross_attn_image_to_token, k, queries + token_pe, queries))
        final = token_to_image(transformer.final_attn_token_to_image, queries + token_pe, keys + self.key_pe, keys,
                               self.softmax)
        queries = transformer.norm_final_attn(queries + final)

        iou = decoder.iou_prediction_head(queries[0:1])
        hyper = torch.cat([mlp(queries[1 + i : 2 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 0)
        return iou, self._upscale_masks(keys, hyper)
