"""Volumes in the demo: a NIfTI file's slices encoded in the background while the user looks at one, the objects of
a slice propagated through the volume (`runtime.volume.VolumeSegmenter`), propagated masks shown again on every
slice the slider visits (as objects that further clicks correct), and the label volume export.

The slices the model sees during propagation are the volume windowed once (`read_nifti_volume`); the slice the
page shows is read as before. The predictor's cache holds at most `CACHE_SLICES` slices of a volume.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io.volume_writers import write_volume_nifti
from sammed_edge.runtime.io.volumes import Volume, read_nifti_volume
from sammed_edge.runtime.metrics import box_from_mask
from sammed_edge.runtime.volume import VolumeSegmenter

from . import state as st
from .engine import DemoSession, Engine

# slices of one volume kept in the embedding cache (LiteMedSAM: 4 MB each)
CACHE_SLICES = 160


@dataclass(eq=False)
class VolumeWork:
    """The volume behind a NIfTI view: which file, axis and window, and its segmenter (masks per slice)."""

    path: Path
    axis: int
    window: Any
    volume: Volume
    segmenter: VolumeSegmenter

    def matches(self, view: Any) -> bool:
        return (self.path, self.axis, self.window) == (view.path, view.axis, view.window)


def attach(engine: Engine, session: DemoSession) -> DemoSession:
    """After a slice was opened: keep (or start) its file's `VolumeWork`, encode the slices around this one in the
    background, and show the masks propagated onto this slice as its objects (the last one active).

    Non-NIfTI views drop the volume work.
    """
    view, state = session.view, session.state
    work = session.volume
    if view is None or state is None or view.kind != "nifti":
        if work is not None:
            work.segmenter.close()
        return dataclasses.replace(session, volume=None)
    if work is None or not work.matches(view):
        if work is not None:
            work.segmenter.close()
        volume = read_nifti_volume(view.path, axis=view.axis, window=view.window)
        cache = min(volume.num_slices, CACHE_SLICES)
        segmenter = VolumeSegmenter(engine.predictor, volume, lock=engine.lock, cache_slices=cache)
        work = VolumeWork(view.path, view.axis, view.window, volume, segmenter)
    work.segmenter.start_background(view.index, limit=min(work.volume.num_slices, CACHE_SLICES) - 1)
    objects = []
    for label in sorted(work.segmenter.structures):
        result = work.segmenter.structures[label].slices.get(view.index)
        if result is not None and result.mask.any():
            box = tuple(int(v) for v in (result.box if result.box is not None else box_from_mask(result.mask)))
            prediction = st.Prediction(result.mask[None], np.array([result.iou], np.float32), result.low_res[None])
            objects.append(st.ObjectState(label=label, box=box, prediction=prediction))
    if objects:
        state = dataclasses.replace(state, objects=tuple(objects))
    return dataclasses.replace(session, volume=work, state=state)


def propagate(session: DemoSession, progress: Callable[[int, int], None] | None = None) -> DemoSession:
    """Propagate every object segmented on the current slice through the volume (the slice becomes its anchor).

    Raises:
        InputError: not a NIfTI volume, or nothing segmented on this slice.
    """
    view, state = session.require()
    work = session.volume
    if work is None or view.kind != "nifti":
        raise InputError("propagation needs a NIfTI volume: open one and segment an object on a slice")
    objects = [obj for obj in state.objects if obj.mask is not None and obj.mask.any()]
    if not objects:
        raise InputError("segment an object on this slice first, then propagate it")
    seconds, slices = 0.0, {}
    for obj in objects:
        work.segmenter.set_mask(view.index, obj.mask, obj.label, low_res=obj.prediction.low_res[obj.chosen],
                                iou=float(obj.prediction.iou[obj.chosen]))
        run = work.segmenter.propagate(obj.label, start=view.index, progress=progress)
        seconds += run["seconds"]
        slices[obj.label] = len(work.segmenter.structures[obj.label].slices)
    timings = {**session.timings, "propagate_ms": seconds * 1e3, "propagated_slices": sum(slices.values())}
    return session.updated(timings=timings)


def summary(session: DemoSession) -> dict[str, Any] | None:
    """The volume's state for the page: slices, slices encoded, masked slices per label, label volume digest."""
    work = session.volume
    if work is None:
        return None
    structures = work.segmenter.structures
    return {"slices": work.volume.num_slices, "encoded": len(work.segmenter.encoder.encoded),
            "labels": {str(k): sorted(v.slices) for k, v in structures.items()},
            "sha256": hashlib.sha256(work.segmenter.label_volume().tobytes()).hexdigest() if structures else None}


def export(session: DemoSession, folder: str | Path) -> Path:
    """Write the label volume of every propagated object as NIfTI aligned with the input.

    Raises:
        InputError: no volume, or nothing propagated yet.
    """
    view, _ = session.require()
    work = session.volume
    if work is None or not work.segmenter.structures:
        raise InputError("nothing propagated yet: segment an object on a slice of a NIfTI volume and press Propagate")
    name = view.name.split(".nii")[0]
    return write_volume_nifti(Path(folder) / f"{name}-labels3d.nii.gz", work.segmenter.label_volume(), work.volume)
