"""Training data: a dataset in SAM-Med2D's layout, split by source, with ground truth in the decoder's frame.

The split holds out whole source datasets, so validation measures generalisation to data from other hospitals,
scanners and annotators rather than to neighbouring slices of a training volume. Rule (`validation_sources`): for
every modality that has at least two sources, the source with the smallest sha256("{split_seed}\\0{source}") is
held out for validation; modalities with one source stay entirely in training (none loses all its data). On
medseg-dev with split seed 0 that holds out CHAOS (CT), Drishti-GS1 (Fundus), LGG (MR) and BUSI (Ultrasound).

Ground truth lives in the decoder's low-resolution frame (L x L, L = `policy.low_res_size`): the model-input
frame scaled by L / input_size, the image in the top-left region that `processing.resized_size` gives, padding
outside it. LiteMedSAM's decoder works at L = input_size = 256, so that frame is the model input itself.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sammed_edge.runtime import processing
from sammed_edge.runtime.io import MaskItem, read_mask
from sammed_edge.runtime.processing import ProcessingPolicy
from sammed_edge.runtime.progress import progress as progress_iter


def _rank(seed: int, source: str) -> str:
    return hashlib.sha256(f"{int(seed)}\x00{source}".encode()).hexdigest()


def validation_sources(items: Sequence[MaskItem], split_seed: int = 0) -> list[str]:
    """Sources held out for validation: one per modality that has at least two sources (see the module doc).

    Args:
        items: dataset items with `modality` and `source` from manifest.csv.
        split_seed: seed of the hash order; the same seed always gives the same sources.

    Returns:
        Sorted source names.
    """
    by_modality: dict[str, set[str]] = defaultdict(set)
    for item in items:
        by_modality[item.modality].add(item.source)
    held = {min(sources, key=lambda source: _rank(split_seed, source)) for sources in by_modality.values() if len(sources) >= 2}
    # A source listed under two modalities is held out as a whole; no modality may lose every source.
    for sources in by_modality.values():
        if sources <= held:
            raise ValueError(f"the split would hold out every source of a modality: {sorted(sources)}")
    return sorted(held)


def split_by_source(items: Sequence[MaskItem], split_seed: int = 0, validation: Sequence[str] | None = None) -> tuple[list[MaskItem], list[MaskItem]]:
    """Train / validation items, disjoint by source, in the input order.

    Args:
        items: dataset items (`runtime.io.read_dataset`).
        split_seed: seed of `validation_sources`.
        validation: explicit validation sources instead of the rule.

    Returns:
        (train, validation) item lists.

    Raises:
        ValueError: an explicit source that the dataset does not have.
    """
    held = set(validation_sources(items, split_seed) if validation is None else validation)
    unknown = held - {item.source for item in items}
    if unknown:
        raise ValueError(f"validation sources not in the dataset: {sorted(unknown)}")
    train = [item for item in items if item.source not in held]
    val = [item for item in items if item.source in held]
    return train, val


def frame_size(original_size: tuple[int, int], policy: ProcessingPolicy) -> tuple[int, int]:
    """(h, w) of the image region in the decoder's L x L frame."""
    height, width = processing.resized_size(original_size, policy)
    ratio = policy.low_res_size / policy.input_size
    return max(1, int(round(height * ratio))), max(1, int(round(width * ratio)))


def mask_to_frame(mask: np.ndarray, policy: ProcessingPolicy) -> np.ndarray:
    """An H x W boolean mask in the decoder's frame: L x L bool, zero outside the image region.

    Area resampling, a pixel is foreground when at least half of it is; a mask that this would empty keeps the
    pixels it touches, so that small objects (nuclei, vessels) stay promptable.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = frame_size(mask.shape, policy)
    coverage = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    resized = coverage >= 0.5
    if mask.any() and not resized.any():
        resized = coverage > 0
    side = policy.low_res_size
    out = np.zeros((side, side), dtype=bool)
    out[:height, :width] = resized
    return out


@dataclass
class MaskSet:
    """Ground truth of many object masks in the decoder's frame.

    Attributes:
        items: the dataset items, one per mask (masks with an empty ground truth are left out).
        masks: N x L x L bool.
        regions: N x 2 int64, (h, w) of each image's region in the frame.
        image_index: (N,) int64, index into `images`.
        images: the distinct image paths, in first-seen order.
    """

    items: list[MaskItem]
    masks: np.ndarray
    regions: np.ndarray
    image_index: np.ndarray
    images: list[Path]

    def __len__(self) -> int:
        return len(self.items)


def load_mask_set(items: Sequence[MaskItem], policy: ProcessingPolicy, progress: bool = True) -> MaskSet:
    """Read every mask of `items` into the decoder's frame (the mask's size is its image's, as the evaluator checks)."""
    kept: list[MaskItem] = []
    masks: list[np.ndarray] = []
    regions: list[tuple[int, int]] = []
    image_ids: dict[Path, int] = {}
    index: list[int] = []
    for item in progress_iter(items, "masks", enabled=progress):
        truth = read_mask(item.mask)
        if not truth.any():
            continue
        kept.append(item)
        masks.append(mask_to_frame(truth, policy))
        regions.append(frame_size(truth.shape, policy))
        index.append(image_ids.setdefault(item.image, len(image_ids)))
    side = policy.low_res_size
    return MaskSet(
        items=kept,
        masks=np.stack(masks) if masks else np.zeros((0, side, side), dtype=bool),
        regions=np.asarray(regions, dtype=np.int64).reshape(-1, 2),
        image_index=np.asarray(index, dtype=np.int64),
        images=list(image_ids),
    )
