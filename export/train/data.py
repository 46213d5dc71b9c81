"""Training data: a dataset in SAM-Med2D's layout, split by source, with ground truth in the decoder's frame.

The split holds out whole source datasets, so validation measures generalisation to data from other hospitals,
scanners and annotators rather than to neighbouring slices of a training volume. Rule (`validation_sources`): for
every modality that has at least two sources, the source with the smallest sha256("{split_seed}\\0{source}") is
held out for validation; modalities with one source stay entirely in training (none loses all its data). On
medseg-dev with split seed 0 that holds out CHAOS (CT), Drishti-GS1 (Fundus), LGG (MR) and BUSI (Ultrasound).

Several datasets (`leave_sources_out`) are split in rounds, one per dataset: round k applies the rule to the
sources of datasets 1..k not yet held out. So the first dataset keeps its own validation sources (numbers stay
comparable with runs on it alone) and every further dataset adds one held-out source per multi-source modality.
On medseg-dev + medseg-train with seed 0 the second round adds Kvasir-SEG, HVSMR 2016, the Depto blood-cell set,
FIVES, the Kaggle nerve ultrasound, OCDC and CURVAS 2024. `cap_per_source` keeps at most N masks of every
validation source, so that no large source decides the mean by itself.

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
from sammed_edge.runtime.io import MaskItem, read_image, read_mask
from sammed_edge.runtime.processing import ProcessingPolicy
from sammed_edge.runtime.progress import progress as progress_iter

from .augment import AugmentSettings, View, apply_image, apply_mask, sample_views, view_rng


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


def leave_sources_out(datasets: Sequence[Sequence[MaskItem]], split_seed: int = 0) -> list[str]:
    """Validation sources of several datasets, chosen in rounds (see the module doc).

    Args:
        datasets: each dataset's items, in the order the datasets were given.
        split_seed: seed of `validation_sources`.

    Returns:
        Sorted source names; for one dataset exactly `validation_sources(dataset, split_seed)`.
    """
    held: set[str] = set()
    seen: list[MaskItem] = []
    for items in datasets:
        seen.extend(items)
        remaining = [item for item in seen if item.source not in held]
        held.update(validation_sources(remaining, split_seed))
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


@dataclass(frozen=True)
class ImageRef:
    """An image file seen through one view (the identity view is the file itself)."""

    path: Path
    view: View = View()

    def load(self) -> np.ndarray:
        """H x W x 3 uint8 pixels of the view."""
        image = read_image(self.path)
        return image if self.view.identity else apply_image(image, self.view)


def load_image(image: "ImageRef | str | Path") -> np.ndarray:
    """Pixels of an `ImageRef` or an image file."""
    return image.load() if isinstance(image, ImageRef) else read_image(image)


@dataclass
class MaskSet:
    """Ground truth of many object masks in the decoder's frame, over images and their augmented views.

    Attributes:
        items: the dataset item of each mask (masks with an empty ground truth are left out).
        masks: N x L x L bool.
        regions: N x 2 int64, (h, w) of each image's region in the frame.
        image_index: (N,) int64, index into `images`.
        images: the distinct (image, view) pairs: every image's identity view first, in first-seen order of
            the images, then its augmented views.
        image_group: (len(images),) int64, the index of each entry's image among the distinct image files.
    """

    items: list[MaskItem]
    masks: np.ndarray
    regions: np.ndarray
    image_index: np.ndarray
    images: list[ImageRef]
    image_group: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def epoch_indices(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The masks of one epoch among `indices`: for every image one of its views, drawn uniformly; sorted."""
        chosen_view: dict[int, int] = {}
        views_of: dict[int, list[int]] = {}
        for index in np.unique(self.image_index[indices]):
            views_of.setdefault(int(self.image_group[index]), []).append(int(index))
        for group, views in sorted(views_of.items()):
            chosen_view[group] = views[int(rng.integers(len(views)))]
        keep = [i for i in indices if chosen_view[int(self.image_group[self.image_index[i]])] == self.image_index[i]]
        return np.asarray(keep, dtype=np.int64)


def load_mask_set(items: Sequence[MaskItem], policy: ProcessingPolicy, progress: bool = True, views: int = 0,
                  augment: AugmentSettings = AugmentSettings(), seed: int = 0) -> MaskSet:
    """Read every mask of `items` into the decoder's frame (the mask's size is its image's, as the evaluator checks).

    Args:
        items: dataset items.
        policy: the model's processing policy (frame size).
        progress: draw a progress bar.
        views: augmented views per image besides the image itself (`augment.sample_views`, drawn from
            `view_rng(seed, image file name)`, so an image's views do not depend on the other images).
        augment: how the views are drawn.
        seed: seed of the views.
    """
    by_image: dict[Path, list[MaskItem]] = {}
    for item in items:
        by_image.setdefault(item.image, []).append(item)
    kept: list[MaskItem] = []
    masks: list[np.ndarray] = []
    regions: list[tuple[int, int]] = []
    index: list[int] = []
    refs: list[ImageRef] = []
    groups: list[int] = []
    for group, (image, members) in enumerate(progress_iter(list(by_image.items()), "masks", enabled=progress)):
        truths = [(item, read_mask(item.mask)) for item in members]
        truths = [(item, truth) for item, truth in truths if truth.any()]
        if not truths:
            continue
        image_views = [View()]
        if views:
            image_views += sample_views(truths[0][1].shape, [truth for _, truth in truths], views,
                                        view_rng(seed, image.name), augment)
        for view in image_views:
            entries = [(item, truth if view.identity else apply_mask(truth, view, augment.keep_fraction)) for item, truth in truths]
            entries = [(item, truth) for item, truth in entries if truth is not None]
            if not entries:
                continue
            refs.append(ImageRef(Path(image), view))
            groups.append(group)
            for item, truth in entries:
                kept.append(item)
                masks.append(mask_to_frame(truth, policy))
                regions.append(frame_size(truth.shape, policy))
                index.append(len(refs) - 1)
    side = policy.low_res_size
    return MaskSet(
        items=kept,
        masks=np.stack(masks) if masks else np.zeros((0, side, side), dtype=bool),
        regions=np.asarray(regions, dtype=np.int64).reshape(-1, 2),
        image_index=np.asarray(index, dtype=np.int64),
        images=refs,
        image_group=np.asarray(groups, dtype=np.int64),
    )


def concat_mask_sets(first: MaskSet, second: MaskSet) -> MaskSet:
    """One `MaskSet` holding `first`'s masks, then `second`'s (image indices and groups renumbered)."""
    offset = len(first.images)
    groups = int(first.image_group.max()) + 1 if len(first.image_group) else 0
    return MaskSet(
        items=first.items + second.items,
        masks=np.concatenate([first.masks, second.masks]),
        regions=np.concatenate([first.regions, second.regions]),
        image_index=np.concatenate([first.image_index, second.image_index + offset]),
        images=first.images + second.images,
        image_group=np.concatenate([first.image_group, second.image_group + groups]),
    )


def default_pool(data: str | Path | None) -> Path | None:
    """`unlabeled-pool` beside a dataset folder, when it exists."""
    if data is None:
        return None
    candidate = Path(data).resolve().parent / "unlabeled-pool"
    return candidate if (candidate / "manifest.csv").is_file() else None
