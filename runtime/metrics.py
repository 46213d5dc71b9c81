"""Segmentation metrics and prompts derived from ground truth."""

from __future__ import annotations

from typing import Sequence

import cv2
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


def curve_auc(values: Sequence[float]) -> float:
    """Normalised area under a Dice-vs-clicks curve.

    Args:
        values: Dice after clicks 1..N (N >= 1).

    Returns:
        The trapezoid area over clicks 1..N divided by N - 1 (the curve's mean height); `values[0]` when N == 1.
    """
    curve = np.asarray(values, dtype=np.float64).reshape(-1)
    if curve.size == 0:
        raise ValueError("an empty curve has no area")
    if curve.size == 1:
        return float(curve[0])
    return float(((curve[:-1] + curve[1:]) / 2.0).sum() / (curve.size - 1))


def _farthest_from_background(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the region's pixel farthest from the background, the image border counting as background.

    Args:
        region: H x W boolean mask, not empty.

    Returns:
        The maximum of the exact Euclidean distance transform; ties go to the first pixel in row-major order.
    """
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        raise ValueError("empty mask has no interior point")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # The one-pixel background ring around the bounding box is at least as close as any background pixel
    # beyond it, so the crop's transform equals the full image's; the ring also makes the border background.
    crop = np.pad(region[y0:y1, x0:x1].astype(np.uint8), 1)
    distance = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x0 + col), int(y0 + row)


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The first click of the interactive protocol: the mask's pixel farthest from its background.

    Args:
        mask: H x W boolean mask, not empty.

    Returns:
        (x, y) integer pixel indices at the maximum of the Euclidean distance transform of the mask padded by one
        background pixel (so the image border counts as background); ties go to the first in row-major order.

    Raises:
        ValueError: the mask is empty.
    """
    return _farthest_from_background(np.asarray(mask, dtype=bool))


def next_click(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int] | None:
    """The corrective click for a prediction: centre of its largest connected error region.

    False negatives (missed foreground) and false positives are split into 8-connected components; the largest
    component by area among both wins (a tie goes to the missed region, then to the lower component label). The
    click is that component's pixel farthest from its outside (`interior_point` of the component).

    Args:
        pred: H x W boolean prediction.
        truth: H x W boolean ground truth.

    Returns:
        (x, y, label): integer pixel indices and 1 (positive click in a miss) or 0 (negative click in a false
        positive); None when the prediction has no error pixel.
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    best: tuple[int, np.ndarray, int] | None = None
    for label, error in ((1, truth & ~pred), (0, pred & ~truth)):
        if not error.any():
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
        areas = stats[1:count, cv2.CC_STAT_AREA]
        index = int(np.argmax(areas))
        if best is None or areas[index] > best[0]:
            best = (int(areas[index]), components == index + 1, label)
    if best is None:
        return None
    x, y = _farthest_from_background(best[1])
    return x, y, best[2]


def sample_points(mask: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random point prompts from a ground-truth mask, as SAM-Med2D's test.py draws them (`init_point_sampling`).

    One point is a uniformly random foreground pixel (a background pixel labelled 0 if the mask is empty). More
    points are count // 2 foreground and the rest background pixels, drawn with replacement, then shuffled; when
    one side is empty all points come from the other.

    Args:
        mask: H x W boolean mask.
        count: number of points, >= 1.
        rng: the random generator to draw from.

    Returns:
        coords: count x 2 float64 (x, y) integer pixel indices (SAM's prompt encoder adds the half pixel).
        labels: (count,) int64, 1 foreground / 0 background.
    """
    mask = np.asarray(mask, dtype=bool)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    flat = mask.reshape(-1)
    foreground = np.flatnonzero(flat)
    background = np.flatnonzero(~flat)
    if count == 1:
        num_fg = 1 if foreground.size else 0
    else:
        num_fg = count // 2
        if background.size == 0:
            num_fg = count
        elif foreground.size == 0:
            num_fg = 0
    num_bg = count - num_fg
    picks = np.concatenate([
        foreground[rng.integers(foreground.size, size=num_fg)] if num_fg else foreground[:0],
        background[rng.integers(background.size, size=num_bg)] if num_bg else background[:0],
    ])
    labels = np.concatenate([np.ones(num_fg, np.int64), np.zeros(num_bg, np.int64)])
    if count > 1:
        order = rng.permutation(count)
        picks, labels = picks[order], labels[order]
    rows, cols = np.divmod(picks, mask.shape[1])
    return np.stack([cols, rows], axis=1).astype(np.float64), labels


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a 3D mask with at least one of their 6 neighbours outside it (the volume's border is outside)."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (1, -1):
            inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return mask & ~inner


def _near(points: np.ndarray, target: np.ndarray, spacing: Sequence[float], tolerance: float) -> int:
    """How many voxels of `points` have a voxel of `target` within `tolerance` mm (voxel centres)."""
    reach = [int(np.floor(tolerance / s)) for s in spacing]
    offsets = [(a, b, c) for a in range(-reach[0], reach[0] + 1) for b in range(-reach[1], reach[1] + 1)
               for c in range(-reach[2], reach[2] + 1)
               if (a * spacing[0]) ** 2 + (b * spacing[1]) ** 2 + (c * spacing[2]) ** 2 <= tolerance**2 + 1e-9]
    padded = np.pad(target, [(r, r) for r in reach])
    found = np.zeros_like(points)
    shape = points.shape
    for a, b, c in offsets:
        found |= padded[reach[0] + a: reach[0] + a + shape[0], reach[1] + b: reach[1] + b + shape[1],
                        reach[2] + c: reach[2] + c + shape[2]]
    return int((found & points).sum())


def surface_dice(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance: float = 2.0) -> float:
    """Normalised surface Dice (NSD) of two 3D masks: the fraction of both surfaces within `tolerance` mm of the other.

    Surfaces are the masks' boundary voxels (6-connectivity), distances are between voxel centres with the given
    spacing (mm per axis, in the arrays' axis order); each boundary voxel counts equally.

    Args:
        pred, truth: D x H x W boolean masks.
        spacing: 3 voxel sizes in mm.
        tolerance: in mm.

    Returns:
        NSD in 0..1: 1.0 when both masks are empty, 0.0 when only one is.
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"surface_dice needs two 3D masks of one shape, got {pred.shape} and {truth.shape}")
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    # crop to the union's bounding box plus the reach, so the shifted copies stay small
    both = pred | truth
    lows, highs = [], []
    for axis, size in enumerate(both.shape):
        hit = np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != axis)))
        lows.append(max(int(hit[0]) - 1, 0))
        highs.append(min(int(hit[-1]) + 2, size))
    crop = tuple(slice(low, high) for low, high in zip(lows, highs))
    surface_pred, surface_truth = _surface(pred[crop]), _surface(truth[crop])
    near = _near(surface_pred, surface_truth, spacing, tolerance) + _near(surface_truth, surface_pred, spacing, tolerance)
    return float(near / (surface_pred.sum() + surface_truth.sum()))
