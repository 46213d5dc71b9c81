"""The model side of the service: one loaded bundle, one embedding per session, prompts to ranked masks.

`Engine` loads the bundle once (`runtime.predictor.Predictor`) and gives each session its own `Predictor` over the
same two backend sessions (backends allow concurrent `run` calls), so a session's embedding, geometry and zoom
windows are its own and `predict` on different sessions runs in parallel. Masks are exactly what
`Predictor.set_image` + `Predictor.predict` return for the same image and prompts. Used in-process by
`service.LocalService` and by each Ray Serve model replica (`ray_app`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.processing import mask_prompt_from_logits
from sammed_edge.runtime.predictor import Predictor


@dataclass(frozen=True)
class Prompt:
    """One predict request in pixel coordinates of the uploaded image.

    Attributes:
        points: N x 2 (x, y) or None.
        labels: (N,) 1 foreground / 0 background, or None.
        box: (x0, y0, x1, y1) or None.
        multimask: return every multimask candidate (3 for SAM's decoder) instead of the single mask.
    """

    points: list[list[float]] | None = None
    labels: list[int] | None = None
    box: list[float] | None = None
    multimask: bool = False


@dataclass(frozen=True)
class Prediction:
    """Ranked candidates of one predict call (best predicted IoU first).

    Attributes:
        masks: C x H x W bool.
        iou: (C,) float32 predicted IoU.
        low_res: C x L x L float32 low-resolution logits (the next call's mask prompt).
        timings_ms: "decode" (the decoder and post-processing, as the predictor measured them).
    """

    masks: np.ndarray
    iou: np.ndarray
    low_res: np.ndarray
    timings_ms: dict[str, float]


class Engine:
    """A bundle loaded once, encoding images into per-session predictors.

    Args:
        predictor: the loaded bundle (its backends are shared by every session).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.policy = predictor.policy

    @classmethod
    def from_bundle(cls, path: str | Path, threads: int | None = None, backend: str | None = None) -> "Engine":
        """Load and verify a bundle (artifact hashes checked).

        Raises:
            BundleError, BackendError: as `Predictor.from_bundle`.
        """
        return cls(Predictor.from_bundle(path, backend=backend, threads=threads, cache_size=0, verify=True))

    def describe(self) -> dict[str, Any]:
        return self.predictor.describe()

    def encode(self, image: np.ndarray) -> tuple[Predictor, float]:
        """Encode an H x W x 3 uint8 image into a fresh predictor of its own.

        Returns:
            (predictor with the image set, encoder wall time in ms).
        """
        base = self.predictor
        view = Predictor(base.bundle, base.encoder, base.decoder, cache_size=0, trim_heap=base.trim_heap)
        start = time.perf_counter()
        view.set_image(image)
        return view, (time.perf_counter() - start) * 1e3

    def predict(self, view: Predictor, prompt: Prompt, previous_low_res: np.ndarray | None = None) -> Prediction:
        """Run the decoder on a session's embedding.

        Args:
            view: the session's predictor (from `encode`); calls on one view must not overlap.
            prompt: points / labels / box in image pixels.
            previous_low_res: L x L low-res logits of the session's last best mask, fed back as the mask prompt
                (in the family's convention, `processing.mask_prompt_from_logits`), or None.

        Raises:
            InputError: no prompt, or prompts the predictor rejects (outside the image, mismatched labels, ...).
        """
        if prompt.points is None and prompt.box is None:
            raise InputError("a predict request needs a prompt: points (with labels) and/or a box")
        mask_input = None if previous_low_res is None else mask_prompt_from_logits(previous_low_res, self.policy)
        masks, iou, low_res = view.predict(
            point_coords=prompt.points,
            point_labels=prompt.labels,
            box=prompt.box,
            mask_input=mask_input,
            multimask_output=prompt.multimask,
        )
        order = np.argsort(-iou, kind="stable")
        decode_ms = float(view.timings.get("predict_ms", 0.0))
        return Prediction(masks[order], iou[order], low_res[order], {"decode": decode_ms})
