"""Slice propagation through a volume over a `Predictor`: prompt one slice (or several), segment the structure in 3D.

The user prompts a slice (a box and/or clicks): that slice becomes an anchor. `propagate` walks from each anchor
to both sides; slice j + 1 (or j - 1) is prompted from slice j's result as `PropagationSettings.prompt` says: the
box of j's mask grown by a margin (`processing.expand_box`), j's low-res logits as the mask prompt
(`processing.mask_prompt_from_logits`), and / or a click at the interior of j's mask (`metrics.interior_point`).
A walk stops at the volume's end, halfway to another anchor, or where the structure ends: an empty mask, a
predicted IoU below `min_iou`, or an area below `min_area_ratio` (above `max_area_ratio`) times the previous slice's, or a mean grey level
inside the mask that moved more than `max_shift` from the anchor's (the box then holds other tissue). A correction (more clicks on any
slice, `prompt` again) makes that slice an anchor; propagating from it redoes both sides up to the next anchors
and drops masks of the old walk beyond where the new one stops.

Slices are encoded once: the predictor's embedding cache holds them (`VolumeSegmenter` asks for a cache as large as
the slices it will visit). `start_background` encodes slices around a given one in a background thread (nearest
first) while the user looks at it; a propagation then takes its slices from that worker (asking it for the slice
it needs next) instead of competing with it for the cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import metrics, processing
from .errors import InputError
from .io.volumes import Volume, check_slice_index
from .predictor import PromptPredictor

PROMPTS = ("box", "box+mask", "box+point", "box+mask+point", "mask", "mask+point")

# called as progress(done, total) during a propagation; total is an upper bound (slices that may be visited)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PropagationSettings:
    """How a slice's mask prompts its neighbour, and when a walk stops (defaults chosen on medvol-dev, docs/volumes.md).

    Attributes:
        prompt: what the neighbour gets, one of `PROMPTS`: "box" (the mask's box grown by the margin), "mask"
            (its low-res logits as mask prompt), "point" (a foreground click at its interior), combined with "+".
        margin: pixels added on every side of the previous mask's box ...
        margin_fraction: ... plus this fraction of the box's longer side.
        min_box_ratio: the next box's width and height are at least this fraction of the previous slice's box
            (centred on the mask): a mask that under-segments does not shrink the box it prompts, so the walk does
            not drift off the structure; 0 boxes the mask alone.
        min_iou: stop where the predicted IoU falls below this.
        min_area_ratio: stop where the mask's area falls below this fraction of the previous slice's.
        max_area_ratio: stop where it grows beyond this multiple of the previous slice's (the mask leaking into
            its surroundings once the structure has ended; a box with a margin lets a leak grow every slice).
        max_shift: stop where the mean grey level (0..255, the volume's window) inside the mask moves more than
            this from the mean inside the walk's anchor mask: past a structure's end the box holds other tissue.
        min_pixels: stop where the mask has fewer pixels (an empty mask at 1).
    """

    prompt: str = "box+mask"
    margin: float = 1.0
    margin_fraction: float = 0.0
    min_box_ratio: float = 0.9
    min_iou: float = 0.3
    min_area_ratio: float = 0.25
    max_area_ratio: float = 2.0
    max_shift: float = 30.0
    min_pixels: int = 1

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {PROMPTS}, got {self.prompt!r}")


@dataclass
class SliceResult:
    """One slice of one structure.

    Attributes:
        mask: H x W bool.
        iou: the model's predicted IoU of `mask`.
        low_res: L x L float32 logits of `mask` (the next slice's mask prompt).
        box: the box prompt used (x0, y0, x1, y1), or None.
        points: N x 2 (x, y) clicks used, or None; point_labels: their N labels.
        anchor: whether the user prompted this slice (else it was propagated).
    """

    mask: np.ndarray
    iou: float
    low_res: np.ndarray
    box: np.ndarray | None = None
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    anchor: bool = False


@dataclass
class Structure:
    """One labelled structure of a volume: its slices' results (slice index -> SliceResult)."""

    label: int
    slices: dict[int, SliceResult] = field(default_factory=dict)

    @property
    def anchors(self) -> list[int]:
        return sorted(k for k, r in self.slices.items() if r.anchor)


class SliceEncoder:
    """Encodes a volume's slices into the predictor's cache, in a background thread or on demand.

    The worker takes slices from a priority list; `ensure(j)` moves j to the front and waits for it, so the
    slice a propagation needs next is always the one being encoded.
    """

    def __init__(self, predictor: PromptPredictor, images: Callable[[int], np.ndarray], count: int) -> None:
        self.predictor, self.images, self.count = predictor, images, count
        self._done: set[int] = set()
        self._queue: list[int] = []
        self._busy: int | None = None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    @property
    def running(self) -> bool:
        """Whether the background worker runs."""
        with self._cond:
            return self._thread is not None and self._thread.is_alive() and not self._stop

    @property
    def encoded(self) -> set[int]:
        with self._cond:
            return set(self._done)

    def schedule(self, order: Sequence[int]) -> None:
        """Encode `order` (slice indices, first first) in the background thread, replacing what was queued."""
        with self._cond:
            self._queue = [int(j) for j in order if int(j) not in self._done]
            self._stop = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="slice-encoder", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def stop(self) -> None:
        """Drop the queue and wait for the slice being encoded (the worker then ends)."""
        with self._cond:
            self._queue = []
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def ensure(self, index: int) -> None:
        """Return once slice `index` is in the cache: from the worker if it runs, else encoded here."""
        with self._cond:
            if index in self._done:
                return
            running = self._thread is not None and self._thread.is_alive() and not self._stop
            if running:
                if index != self._busy:
                    self._queue = [index] + [j for j in self._queue if j != index]
                    self._cond.notify_all()
                while index not in self._done and self._thread.is_alive():
                    self._cond.wait(0.05)
                if index in self._done:
                    return
        self._encode(index)

    def _encode(self, index: int) -> None:
        self.predictor.preload(self.images(index))
        with self._cond:
            self._done.add(index)
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait()
                if self._stop:
                    self._thread = None
                    return
                index = self._queue.pop(0)
                if index in self._done:
                    continue
                self._busy = index
            try:
                self._encode(index)
            finally:
                with self._cond:
                    self._busy = None


def _at_least(box: np.ndarray, reference: np.ndarray, ratio: float) -> np.ndarray:
    """`box` (x0, y0, x1, y1) widened about its centre to at least `ratio` times `reference`'s width and height."""
    out = np.asarray(box, dtype=np.float64).copy()
    for low, high in ((0, 2), (1, 3)):
        want = ratio * (reference[high] - reference[low])
        if out[high] - out[low] < want:
            centre = (out[high] + out[low]) / 2
            out[low], out[high] = centre - want / 2, centre + want / 2
    return out


def nearest_first(center: int, count: int, limit: int | None = None) -> list[int]:
    """Slice indices 0..count-1 ordered by distance from `center` (above before below), at most `limit`."""
    order = [center]
    for step in range(1, count):
        order += [j for j in (center + step, center - step) if 0 <= j < count]
    return order[: limit if limit is not None else count]


class VolumeSegmenter:
    """Prompted segmentation of one volume's structures, slice by slice, with propagation (see the module docstring).

    Args:
        predictor: the predictor; its embedding cache is enlarged to hold `cache_slices` slices.
        volume: a `Volume`, or an S x H x W (x 3) uint8 stack of slice images.
        settings: propagation settings.
        lock: held around each set_image + predict (share one when other code uses the same predictor).
        cache_slices: slices the cache must hold (default: all of them).
    """

    def __init__(self, predictor: PromptPredictor, volume: Volume | np.ndarray, settings: PropagationSettings | None = None,
                 lock: threading.Lock | None = None, cache_slices: int | None = None) -> None:
        images = volume.images if isinstance(volume, Volume) else np.asarray(volume)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[0] == 0:
            raise InputError(f"volume images must be an S x H x W (x 3) uint8 stack, got {images.dtype} of shape {images.shape}")
        self.predictor = predictor
        self.volume = volume if isinstance(volume, Volume) else None
        self.images = images
        self.settings = settings or PropagationSettings()
        self.lock = lock or threading.Lock()
        self.structures: dict[int, Structure] = {}
        wanted = images.shape[0] if cache_slices is None else int(cache_slices)
        if hasattr(predictor, "cache_size") and predictor.cache_size < wanted:
            predictor.cache_size = wanted
        self.encoder = SliceEncoder(predictor, self.slice_image, self.num_slices)
        self.timings: dict[str, float] = {}

    # -- slices ------------------------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def slice_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def check_index(self, index: Any) -> int:
        return check_slice_index(index, self.num_slices)

    def slice_image(self, index: int) -> np.ndarray:
        """Slice `index` as H x W x 3 uint8."""
        image = self.images[self.check_index(index)]
        return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image

    def start_background(self, center: int, limit: int | None = None) -> None:
        """Encode slices nearest `center` first in a background thread (at most `limit`; default all)."""
        self.encoder.schedule(nearest_first(self.check_index(center), self.num_slices, limit))

    def stop_background(self) -> None:
        self.encoder.stop()

    def close(self) -> None:
        self.stop_background()

    # -- prompting ---------------------------------------------------------------------------------------
    def _predict(self, index: int, box: np.ndarray | None, points: np.ndarray | None, labels: np.ndarray | None,
                 mask_input: np.ndarray | None) -> SliceResult:
        self.encoder.ensure(index)
        multimask = box is None and mask_input is None and points is not None and len(points) == 1
        with self.lock:
            self.predictor.set_image(self.slice_image(index))
            masks, iou, low_res = self.predictor.predict(
                point_coords=points, point_labels=labels, box=box, mask_input=mask_input,
                multimask_output=multimask, best_only=True,
            )
        return SliceResult(mask=masks[0], iou=float(iou[0]), low_res=low_res[0], box=box, points=points, point_labels=labels)

    def prompt(self, index: int, box: Sequence[float] | None = None, points: Sequence[Sequence[float]] | None = None,
               point_labels: Sequence[int] | None = None, label: int = 1, replace: bool = False) -> SliceResult:
        """Prompt (or correct) structure `label` on slice `index`; the slice becomes an anchor.

        When the slice already has a result for `label` (and not `replace`), the new clicks are added to its
        prompts (a propagated slice's box included) and its low-res logits are fed back as the mask prompt: a
        correction. A new `box` replaces the old one.

        Args:
            index: slice index.
            box: (x0, y0, x1, y1) in slice pixels.
            points: N x 2 (x, y) clicks; point_labels: N labels (1 foreground, 0 background; default all 1).
            label: the structure's label value (>= 1).
            replace: forget the slice's earlier prompts and mask first.

        Returns:
            The slice's new result.

        Raises:
            InputError: bad index, label or prompts (from the predictor's checks).
        """
        index = self.check_index(index)
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 1 <= int(label) <= 65535:
            raise InputError(f"label must be an integer in 1..65535, got {label!r}")
        structure = self.structures.setdefault(int(label), Structure(int(label)))
        previous = None if replace else structure.slices.get(index)
        coords = None if points is None or len(points) == 0 else np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if coords is not None:
            labels = np.ones(len(coords), np.int64) if point_labels is None else np.asarray(point_labels, dtype=np.int64).reshape(-1)
            if len(labels) != len(coords):
                raise InputError(f"{len(coords)} point(s) with {len(labels)} label(s)")
        else:
            labels = None
        mask_input = None
        new_box = None if box is None else np.asarray(box, dtype=np.float64).reshape(-1)
        if previous is not None:
            if new_box is None:
                new_box = previous.box
            if previous.points is not None:
                coords = previous.points if coords is None else np.concatenate([previous.points, coords])
                labels = previous.point_labels if labels is None else np.concatenate([previous.point_labels, labels])
            mask_input = processing.mask_prompt_from_logits(previous.low_res, self.predictor.policy)
        if new_box is None and coords is None:
            raise InputError("a slice prompt needs a box and / or clicks")
        start = time.perf_counter()
        result = self._predict(index, new_box, coords, labels, mask_input)
        self.timings["prompt_s"] = time.perf_counter() - start
        result.anchor = True
        structure.slices[index] = result
        return result

    def set_mask(self, index: int, mask: np.ndarray, label: int = 1, low_res: np.ndarray | None = None,
                 iou: float = 1.0) -> SliceResult:
        """Make a given H x W mask (drawn, imported, or segmented elsewhere) slice `index`'s anchor for `label`.

        Args:
            low_res: the L x L logits the mask came from (its neighbour's mask prompt); default logits of +-8 from
                the mask itself.
        """
        index = self.check_index(index)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.slice_size:
            raise InputError(f"mask of shape {mask.shape} does not match the slices' {self.slice_size}")
        side = self.predictor.policy.low_res_size
        if low_res is None:
            low_res = np.where(processing.mask_to_low_res(mask, self.predictor.policy) > 0.5, 8.0, -8.0)
        low_res = np.asarray(low_res, dtype=np.float32).reshape(side, side)
        structure = self.structures.setdefault(int(label), Structure(int(label)))
        result = SliceResult(mask=mask, iou=float(iou), low_res=low_res, anchor=True)
        structure.slices[index] = result
        return result

    # -- propagation -------------------------------------------------------------------------------------
    def _next_prompts(self, previous: SliceResult) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        parts = set(self.settings.prompt.split("+"))
        box = points = labels = mask_input = None
        if "box" in parts:
            tight = metrics.box_from_mask(previous.mask)
            if previous.box is not None and self.settings.min_box_ratio > 0:
                tight = _at_least(tight, previous.box, self.settings.min_box_ratio)
            margin = self.settings.margin + self.settings.margin_fraction * max(tight[2] - tight[0] + 1, tight[3] - tight[1] + 1)
            box = processing.expand_box(tight, margin, self.slice_size)
        if "mask" in parts:
            mask_input = processing.mask_prompt_from_logits(previous.low_res, self.predictor.policy)
        if "point" in parts:
            points = np.asarray([metrics.interior_point(previous.mask)], dtype=np.float64)
            labels = np.ones(1, np.int64)
        return box, points, labels, mask_input

    def _mean_grey(self, index: int, mask: np.ndarray) -> float:
        image = self.images[index]
        return float(image[mask].mean()) if mask.any() else 0.0

    def _stops(self, result: SliceResult, previous: SliceResult, index: int, reference: float) -> str | None:
        """Why the walk stops at `result` on slice `index` (None: it goes on); `reference` is the anchor's mean grey."""
        area = int(result.mask.sum())
        if area < self.settings.min_pixels:
            return "empty"
        if result.iou < self.settings.min_iou:
            return "iou"
        if area < self.settings.min_area_ratio * int(previous.mask.sum()):
            return "area collapse"
        if area > self.settings.max_area_ratio * int(previous.mask.sum()):
            return "area growth"
        if abs(self._mean_grey(index, result.mask) - reference) > self.settings.max_shift:
            return "intensity"
        return None

    def _walk(self, structure: Structure, start: int, step: int, limit: int, on_slice: Callable[[], None]) -> tuple[int, str]:
        """Propagate from anchor `start` in direction `step` (+1 / -1) up to slice `limit` (inclusive).

        Returns:
            (the last slice kept, why the walk stopped). Masks of earlier walks between the stop and `limit` are
            dropped (they belonged to a walk this one replaces).
        """
        previous = structure.slices[start]
        reference = self._mean_grey(start, previous.mask)
        j = start + step
        reason = "end of volume" if limit in (0, self.num_slices - 1) else "next anchor's half"
        while (j - limit) * step <= 0:
            if previous.mask.sum() == 0:
                reason = "empty"
                break
            box, points, labels, mask_input = self._next_prompts(previous)
            result = self._predict(j, box, points, labels, mask_input)
            on_slice()
            why = self._stops(result, previous, j, reference)
            if why is not None:
                reason = why
                break
            structure.slices[j] = result
            previous = result
            j += step
        for k in range(j, limit + step, step):
            structure.slices.pop(k, None)
        return j - step, reason

    def propagate(self, label: int = 1, start: int | None = None, progress: Progress | None = None) -> dict[str, Any]:
        """Propagate structure `label` from its anchors (or from anchor `start` only) to both sides.

        Args:
            label: the structure's label value.
            start: the anchor to propagate from (after a correction there); default every anchor.
            progress: called as progress(slices done, upper bound of slices to do).

        Returns:
            "slices" (sorted indices with a mask), "stops" (per walk: anchor, direction, last slice, reason),
            "seconds".

        Raises:
            InputError: no such structure, or `start` is not one of its anchors.
        """
        structure = self.structures.get(int(label))
        if structure is None or not structure.anchors:
            raise InputError(f"structure {label} has no prompted slice to propagate from")
        anchors = structure.anchors if start is None else [self.check_index(start)]
        if anchors[0] not in structure.slices or not structure.slices[anchors[0]].anchor:
            raise InputError(f"slice {start} is not a prompted slice of structure {label}")
        begin = time.perf_counter()
        done = [0]
        total = self.num_slices - len(anchors)

        def tick() -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], max(total, done[0]))

        # the background worker encodes in the order this propagation visits slices
        order: list[int] = []
        for anchor in anchors:
            order += list(range(anchor + 1, self.num_slices)) + list(range(anchor - 1, -1, -1))
        if self.encoder.running:
            self.encoder.schedule(order)
        every = structure.anchors
        stops = []
        for anchor in anchors:
            position = every.index(anchor)
            above = every[position + 1] if position + 1 < len(every) else None
            below = every[position - 1] if position > 0 else None
            # between two anchors each walks to the middle: the nearer anchor's prompt decides a slice
            limits = {1: self.num_slices - 1 if above is None else (anchor + above) // 2,
                      -1: 0 if below is None else (below + anchor) // 2 + 1}
            for step in (1, -1):
                last, reason = self._walk(structure, anchor, step, limits[step], tick)
                stops.append({"anchor": anchor, "direction": step, "last": last, "reason": reason})
        seconds = time.perf_counter() - begin
        self.timings["propagate_s"] = seconds
        if progress is not None:
            progress(done[0], done[0])
        return {"slices": sorted(structure.slices), "stops": stops, "seconds": seconds}

    # -- results -----------------------------------------------------------------------------------------
    def mask_volume(self, label: int = 1) -> np.ndarray:
        """S x H x W bool mask of structure `label` (all False when it has none)."""
        out = np.zeros((self.num_slices, *self.slice_size), dtype=bool)
        structure = self.structures.get(int(label))
        for k, result in (structure.slices.items() if structure else ()):
            out[k] = result.mask
        return out

    def label_volume(self) -> np.ndarray:
        """S x H x W label ids (uint8, uint16 above 255); where structures overlap the higher label wins."""
        dtype = np.uint8 if max(self.structures, default=0) <= 255 else np.uint16
        out = np.zeros((self.num_slices, *self.slice_size), dtype=dtype)
        for label in sorted(self.structures):
            for k, result in self.structures[label].slices.items():
                out[k][result.mask] = label
        return out
