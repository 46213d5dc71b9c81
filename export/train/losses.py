"""SAM-Med2D's training loss: 20 x focal + Dice on the mask logits, plus MSE between predicted and actual IoU.

Every function takes an optional `valid` map (B x 1 x L x L, 1 inside the image region, 0 in the padding) so
that pixels which inference crops away neither count as errors nor dilute the mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _weights(logits: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.ones_like(logits[:, :1])
    return valid.to(logits.dtype)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss, mean over valid pixels, per mask.

    Per pixel: -a_t (1 - p_t)^gamma log(p_t), p_t = p for a foreground target and 1 - p otherwise, a_t = alpha
    for foreground and 1 - alpha for background.

    Args:
        logits: B x K x L x L mask logits.
        targets: B x 1 x L x L (or B x K x L x L) in {0, 1}.
        valid: B x 1 x L x L in {0, 1} or None.

    Returns:
        B x K.
    """
    targets = targets.to(logits.dtype).expand_as(logits)
    weight = _weights(logits, valid)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    loss = alpha_t * (1 - p_t) ** gamma * ce
    return (loss * weight).sum((-2, -1)) / weight.sum((-2, -1)).clamp_min(1.0)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities, per mask: 1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s).

    Returns:
        B x K.
    """
    targets = targets.to(logits.dtype).expand_as(logits)
    weight = _weights(logits, valid)
    prob = torch.sigmoid(logits) * weight
    targets = targets * weight
    inter = (prob * targets).sum((-2, -1))
    return 1 - (2 * inter + smooth) / (prob.sum((-2, -1)) + targets.sum((-2, -1)) + smooth)


@torch.no_grad()
def mask_iou(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the binarised masks (logit > threshold) with the targets, per mask; 1 when both are empty.

    Returns:
        B x K.
    """
    weight = _weights(logits, valid) > 0
    pred = (logits > threshold) & weight
    truth = (targets > 0.5).expand_as(logits) & weight
    inter = (pred & truth).sum((-2, -1)).to(logits.dtype)
    union = (pred | truth).sum((-2, -1)).to(logits.dtype)
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


@torch.no_grad()
def mask_dice(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None, threshold: float = 0.0) -> torch.Tensor:
    """Dice of the binarised masks with the targets, per mask, as `runtime.metrics.dice` defines it. B x K."""
    weight = _weights(logits, valid) > 0
    pred = (logits > threshold) & weight
    truth = (targets > 0.5).expand_as(logits) & weight
    inter = (pred & truth).sum((-2, -1)).to(torch.float64)
    total = (pred.sum((-2, -1)) + truth.sum((-2, -1))).to(torch.float64)
    return ((2 * inter + 1e-7) / (total + 1e-7)).to(logits.dtype)


@dataclass
class LossOutput:
    """loss: the scalar to minimise; chosen: (B,) candidate whose mask loss counted; dice: (B,) Dice of it."""

    loss: torch.Tensor
    chosen: torch.Tensor
    dice: torch.Tensor


def segmentation_loss(logits: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
                      focal_weight: float = 20.0, iou_weight: float = 1.0) -> LossOutput:
    """SAM-Med2D's loss over K candidate masks, with SAM's rule for several candidates.

    Each candidate's mask loss is focal_weight x focal + Dice; only the lowest one per sample counts (SAM's
    multimask training, K = 1 for the single-mask output). The IoU head regresses the actual IoU of every
    candidate (mean squared error), which is what picks the candidate at inference.

    Args:
        logits: B x K x L x L candidate logits.
        iou_pred: B x K predicted IoU.
        targets: B x 1 x L x L ground truth in {0, 1}.
        valid: B x 1 x L x L image region or None.

    Returns:
        `LossOutput`; loss = mean over samples of (min mask loss) + iou_weight x mean squared IoU error.
    """
    mask_losses = focal_weight * focal_loss(logits, targets, valid) + dice_loss(logits, targets, valid)
    best, chosen = mask_losses.min(dim=1)
    actual = mask_iou(logits, targets, valid)
    iou_loss = F.mse_loss(iou_pred, actual)
    dice = mask_dice(logits, targets, valid).gather(1, chosen[:, None])[:, 0]
    return LossOutput(loss=best.mean() + iou_weight * iou_loss, chosen=chosen, dice=dice)
