"""Simulated prompts for training: jittered boxes, random points and corrective clicks.

Everything here works in the decoder's L x L frame (`data.mask_to_frame`) with integer pixel indices (x = column,
y = row), inside the image region (h, w) of that frame. `decoder_prompts` turns a prompt set into the decoder's
inputs through `processing.decoder_inputs`, the same code that orders and transforms prompts at inference.
"""

from __future__ import annotations

import cv2
import numpy as np

from sammed_edge.runtime import metrics, processing
from sammed_edge.runtime.processing import ImageGeometry, ProcessingPolicy

PADDING = -1  # label of a point that carries no position (SAM's padding point)


def _crop(mask: np.ndarray, region: tuple[int, int] | None) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if region is None:
        return mask
    return mask[: int(region[0]), : int(region[1])]


def jittered_box(mask: np.ndarray, rng: np.random.Generator, region: tuple[int, int] | None = None,
                 scale: float = 0.1, max_shift: float = 20.0) -> np.ndarray:
    """The mask's tight box with each coordinate moved by Gaussian noise, as SAM trains with boxes.

    Args:
        mask: L x L bool ground truth, not empty.
        rng: random generator.
        region: (h, w) of the image region; the box stays inside it (default: the whole frame).
        scale: noise standard deviation as a fraction of the box's side (x noise: width, y noise: height).
        max_shift: largest shift of one coordinate, in pixels.

    Returns:
        (4,) float64 (x0, y0, x1, y1), inclusive pixel indices, x0 <= x1 and y0 <= y1.
    """
    crop = _crop(mask, region)
    box = metrics.box_from_mask(crop)
    sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1] * 2, dtype=np.float64)
    noise = np.clip(rng.normal(0.0, 1.0, 4) * scale * sides, -max_shift, max_shift)
    x0, y0, x1, y1 = np.round(box + noise)
    height, width = crop.shape
    x0, x1 = np.clip(sorted((x0, x1)), 0, width - 1)
    y0, y1 = np.clip(sorted((y0, y1)), 0, height - 1)
    return np.array([x0, y0, x1, y1], dtype=np.float64)


def tight_box(mask: np.ndarray, region: tuple[int, int] | None = None) -> np.ndarray:
    """The mask's tight box (x0, y0, x1, y1), inclusive pixel indices, as the evaluator's box mode prompts."""
    return metrics.box_from_mask(_crop(mask, region)).astype(np.float64)


def loose_box(mask: np.ndarray, rng: np.random.Generator, region: tuple[int, int] | None = None,
              grow: tuple[float, float] = (0.05, 0.25)) -> np.ndarray:
    """The tight box grown on each edge by a random share (uniform in `grow`) of its side, inside the region:
    a box dragged generously around the object."""
    crop = _crop(mask, region)
    x0, y0, x1, y1 = metrics.box_from_mask(crop).astype(np.float64)
    width, height = x1 - x0 + 1, y1 - y0 + 1
    left, top, right, bottom = rng.uniform(*grow, 4) * np.array([width, height, width, height])
    rows, cols = crop.shape
    return np.array([max(0.0, np.floor(x0 - left)), max(0.0, np.floor(y0 - top)),
                     min(cols - 1.0, np.ceil(x1 + right)), min(rows - 1.0, np.ceil(y1 + bottom))])


def inner_click(mask: np.ndarray, rng: np.random.Generator, region: tuple[int, int] | None = None,
                depth: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """One positive click anywhere inside the object, as users click: a random pixel whose distance to the
    background is at least `depth` times the object's largest such distance (any object pixel if none).

    Returns:
        coords 1 x 2 float64 (x, y), labels (1,) int64.
    """
    crop = _crop(mask, region)
    distance = cv2.distanceTransform(np.pad(crop, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    rows, cols = np.nonzero(distance >= depth * distance.max())
    if not len(rows):
        rows, cols = np.nonzero(crop)
    pick = int(rng.integers(len(rows)))
    return np.array([[cols[pick], rows[pick]]], dtype=np.float64), np.array([1], dtype=np.int64)


def random_points(mask: np.ndarray, count: int, rng: np.random.Generator,
                  region: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random point prompts drawn as the evaluator's pointsN modes draw them (`metrics.sample_points`), inside the region.

    Returns:
        coords count x 2 float64 (x, y), labels (count,) int64 (1 foreground, 0 background).
    """
    return metrics.sample_points(_crop(mask, region), count, rng)


def first_click(mask: np.ndarray, region: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Click 1 of the interactive protocol: positive, at the mask's pixel farthest from its background.

    Returns:
        coords 1 x 2 float64 (x, y), labels (1,) int64.
    """
    x, y = metrics.interior_point(_crop(mask, region))
    return np.array([[x, y]], dtype=np.float64), np.array([1], dtype=np.int64)


def corrective_click(pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator, region: tuple[int, int] | None = None,
                     centre: bool = True) -> tuple[int, int, int] | None:
    """The next click for a prediction, in the error region inside the image region.

    Args:
        pred: L x L bool prediction.
        truth: L x L bool ground truth.
        rng: random generator (used when `centre` is False).
        region: (h, w) of the image region; errors in the padding are ignored, as inference crops it away.
        centre: the evaluator's click (`metrics.next_click`: centre of the largest error component) when True;
            otherwise a uniformly random error pixel, as SAM-Med2D's training samples them.

    Returns:
        (x, y, label) with label 1 in a miss and 0 in a false positive, or None when there is no error.
    """
    pred, truth = _crop(pred, region), _crop(truth, region)
    if centre:
        return metrics.next_click(pred, truth)
    errors = np.flatnonzero(pred.reshape(-1) != truth.reshape(-1))
    if errors.size == 0:
        return None
    row, col = divmod(int(errors[rng.integers(errors.size)]), pred.shape[1])
    return col, row, int(truth[row, col])


def decoder_prompts(coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None,
                    policy: ProcessingPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs of one prompt set given in the L x L frame.

    Pixel indices of the L frame are mapped to the model-input frame (pixel centres kept: (p + 0.5) * S / L - 0.5,
    the identity when L = S), then `processing.decoder_inputs` orders them as at inference: points, then box
    corners (labels 2, 3) or one padding point when there is no box. Points labelled -1 are padding.

    Returns:
        point_coords N x 2 float32 (model frame), point_labels (N,) float32.
    """
    side = policy.input_size
    ratio = side / policy.low_res_size

    def to_model(values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) + 0.5) * ratio - 0.5

    points = point_labels = None
    if coords is not None and len(coords):
        point_labels = np.asarray(labels, dtype=np.int64)
        points = np.where((point_labels == PADDING)[:, None], 0.0, to_model(np.asarray(coords).reshape(-1, 2)))
    prompts = processing.Prompts(points, point_labels, None if box is None else to_model(box), None)
    inputs = processing.decoder_inputs(prompts, ImageGeometry((side, side), (side, side)), policy)
    return inputs["point_coords"][0], inputs["point_labels"][0]
