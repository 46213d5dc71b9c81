"""Segmentation metrics and prompts derived from ground truth."""

from __future__ import annotations

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient of two H x W boolean masks, (2|P∩G| + 1e-7) / (|P| + |G| + 1e-7) as SAM-Med2D reports it."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    inter = np.logical_and(pred, truth).sum()
    return float((2.0 * inter + 1e-7) / (pred.sum() + truth.sum() + 1e-7))


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight (x0, y0, x1, y1) box of a non-empty mask, inclusive pixel indices, float64."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
