"""The training losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sammed_edge.export.train.losses import dice_loss, focal_loss, mask_dice, mask_iou, segmentation_loss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_focal_loss_by_hand():
    logits = torch.tensor([[[[2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 1.0]]]])
    p0, p1 = _sigmoid(2.0), _sigmoid(-1.0)
    expected = (0.25 * (1 - p0) ** 2 * -math.log(p0) + 0.25 * (1 - p1) ** 2 * -math.log(p1)) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    background = torch.zeros_like(target)
    expected_bg = (0.75 * p0**2 * -math.log(1 - p0) + 0.75 * p1**2 * -math.log(1 - p1)) / 2
    assert focal_loss(logits, background).item() == pytest.approx(expected_bg, rel=1e-6)


def test_dice_loss_by_hand():
    logits = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(0.5)


def test_iou_and_dice_of_binarised_masks():
    logits = torch.tensor([[[[3.0, 3.0, -3.0, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 1.0, 0.0]]]])
    assert mask_iou(logits, target).item() == pytest.approx(1 / 3)
    assert mask_dice(logits, target).item() == pytest.approx(0.5)
    empty = torch.full_like(logits, -3.0)
    assert mask_iou(empty, torch.zeros_like(target)).item() == 1.0


def test_padding_is_left_out():
    logits = torch.tensor([[[[2.0, 5.0]]]])
    target = torch.tensor([[[[1.0, 0.0]]]])
    valid = torch.tensor([[[[1.0, 0.0]]]])
    p = _sigmoid(2.0)
    assert focal_loss(logits, target, valid).item() == pytest.approx(0.25 * (1 - p) ** 2 * -math.log(p), rel=1e-6)
    assert mask_iou(logits, target, valid).item() == 1.0
    assert dice_loss(logits, target, valid).item() == pytest.approx(1 - (2 * p + 1) / (p + 1 + 1))


def test_segmentation_loss_takes_the_best_candidate_and_learns_every_iou():
    target = torch.tensor([[[[1.0, 0.0]]]])
    good, bad = [4.0, -4.0], [-4.0, 4.0]
    logits = torch.tensor([[bad, good, bad]])[:, :, None, :]  # 1 x 3 x 1 x 2
    iou_pred = torch.tensor([[0.5, 0.5, 0.5]])
    out = segmentation_loss(logits, iou_pred, target)
    assert out.chosen.tolist() == [1]
    best_mask = 20 * focal_loss(logits[:, 1:2], target) + dice_loss(logits[:, 1:2], target)
    actual = torch.tensor([[0.0, 1.0, 0.0]])
    expected = best_mask.item() + ((iou_pred - actual) ** 2).mean().item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.dice.tolist() == pytest.approx([1.0])
