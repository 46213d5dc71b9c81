"""The demo's interaction state and its transitions, free of any UI toolkit and of the predictor.

A `SessionState` is the prompts and results of one image: a list of labelled objects (the last one is being
edited), the first corner of a box being drawn, and an undo stack. Every transition is a pure function that
returns a new state (the old one is pushed onto the undo stack), so the page's handlers are thin and every
interaction can be tested without a browser.

Running the model is the caller's business: a transition that changes the active object's prompts marks the
object `pending`; the caller asks `predict_kwargs` what to pass to `Predictor.predict` (which feeds the object's
previous mask back as a mask prompt) and stores the answer with `with_prediction`.

Coordinates are original-image pixels (x = column, y = row), as `Predictor.predict` takes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.processing import ProcessingPolicy, mask_prompt_from_logits

# Undo steps kept per image. A step shares the arrays of the state it restores, so each costs at most one
# prediction (3 full-size boolean masks and the low-res logits).
HISTORY_LIMIT = 32


@dataclass(frozen=True)
class Click:
    """A point prompt: pixel (x, y) of the original image; positive = foreground."""

    x: int
    y: int
    positive: bool = True


@dataclass(frozen=True, eq=False)
class Prediction:
    """What `Predictor.predict` returned for an object's prompts.

    Attributes:
        masks: C x H x W bool candidate masks.
        iou: (C,) float32 predicted IoU of each candidate.
        low_res: C x L x L float32 low-resolution logits (the source of the next click's mask prompt).
    """

    masks: np.ndarray
    iou: np.ndarray
    low_res: np.ndarray

    def __post_init__(self) -> None:
        count = self.masks.shape[0]
        if self.masks.ndim != 3 or self.iou.shape != (count,) or self.low_res.shape[0] != count or count == 0:
            raise ValueError(
                f"inconsistent prediction: masks {self.masks.shape}, iou {self.iou.shape}, low_res {self.low_res.shape}"
            )


@dataclass(frozen=True, eq=False)
class ObjectState:
    """One labelled object: its prompts, its latest prediction and the candidate chosen from it.

    Attributes:
        label: label id in exported label maps (1, 2, ...).
        clicks: point prompts in the order they were given.
        box: (x0, y0, x1, y1) inclusive pixel corners, or None.
        prediction: the latest prediction for this object, or None before the first one.
        chosen: index of the candidate in `prediction` that is the object's mask.
        pending: the prompts changed since `prediction` was computed.
    """

    label: int
    clicks: tuple[Click, ...] = ()
    box: tuple[int, int, int, int] | None = None
    prediction: Prediction | None = None
    chosen: int = 0
    pending: bool = False

    @property
    def has_prompt(self) -> bool:
        return bool(self.clicks) or self.box is not None

    @property
    def mask(self) -> np.ndarray | None:
        """H x W bool mask of the chosen candidate, or None when nothing was predicted yet."""
        if self.prediction is None or not self.has_prompt:
            return None
        return self.prediction.masks[self.chosen]


@dataclass(frozen=True, eq=False)
class SessionState:
    """All objects segmented on one image, plus the undo stack.

    Attributes:
        size: (H, W) of the image.
        objects: the labelled objects; the last one is active (receives clicks and boxes).
        pending_corner: first corner (x, y) of a box drawn by two clicks, or None.
        history: earlier states, most recent last (at most `HISTORY_LIMIT`).
    """

    size: tuple[int, int]
    objects: tuple[ObjectState, ...] = (ObjectState(label=1),)
    pending_corner: tuple[int, int] | None = None
    history: tuple["SessionState", ...] = field(default=(), repr=False)

    @property
    def active(self) -> ObjectState:
        return self.objects[-1]

    @property
    def can_undo(self) -> bool:
        return bool(self.history)


def new_session(size: tuple[int, int]) -> SessionState:
    """A fresh state for an H x W image: one empty object (label 1), nothing to undo."""
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise InputError(f"image size must be positive, got {size}")
    return SessionState(size=(height, width))


# ------------------------------------------------------------------------------------------- transitions


def _push(state: SessionState, **changes: Any) -> SessionState:
    """`state` with `changes`, remembering `state` for undo."""
    history = (state.history + (dataclasses.replace(state, history=()),))[-HISTORY_LIMIT:]
    return dataclasses.replace(state, history=history, **changes)


def _with_active(state: SessionState, **changes: Any) -> tuple[ObjectState, ...]:
    return state.objects[:-1] + (dataclasses.replace(state.active, **changes),)


def _check_pixel(state: SessionState, x: int, y: int) -> tuple[int, int]:
    height, width = state.size
    if not (0 <= x < width and 0 <= y < height):
        raise InputError(f"pixel (x={x}, y={y}) is outside the {width} x {height} (W x H) image")
    return int(x), int(y)


def click(state: SessionState, x: int, y: int, positive: bool = True) -> SessionState:
    """Add a foreground (positive) or background click to the active object.

    Raises:
        InputError: the pixel is outside the image.
    """
    x, y = _check_pixel(state, x, y)
    clicks = state.active.clicks + (Click(x, y, bool(positive)),)
    return _push(state, objects=_with_active(state, clicks=clicks, pending=True))


def box_corner(state: SessionState, x: int, y: int) -> SessionState:
    """Place a box corner: the first call remembers it, the second sets the active object's box.

    The two corners may be given in any order; the box is their inclusive bounding rectangle and replaces any
    earlier box of the object.

    Raises:
        InputError: the pixel is outside the image.
    """
    x, y = _check_pixel(state, x, y)
    if state.pending_corner is None:
        return _push(state, pending_corner=(x, y))
    x0, y0 = state.pending_corner
    box = (min(x0, x), min(y0, y), max(x0, x), max(y0, y))
    return _push(state, pending_corner=None, objects=_with_active(state, box=box, pending=True))


def choose(state: SessionState, index: int) -> SessionState:
    """Make candidate `index` of the active object's prediction its mask (and the next click's mask prompt).

    Raises:
        InputError: no prediction yet, or no such candidate.
    """
    prediction = state.active.prediction
    if prediction is None:
        raise InputError("there are no mask candidates to choose from yet")
    if not 0 <= index < prediction.masks.shape[0]:
        raise InputError(f"candidate {index} does not exist (there are {prediction.masks.shape[0]})")
    if index == state.active.chosen:
        return state
    return _push(state, objects=_with_active(state, chosen=int(index)))


def new_object(state: SessionState) -> SessionState:
    """Keep the active object and start the next one (label = highest label + 1).

    An active object without prompts is reused rather than left empty, so the call changes nothing then.
    """
    if not state.active.has_prompt:
        return state
    label = max(obj.label for obj in state.objects) + 1
    return _push(state, objects=state.objects + (ObjectState(label=label),), pending_corner=None)


def reset(state: SessionState) -> SessionState:
    """Remove every object and prompt (undoable)."""
    if len(state.objects) == 1 and not state.active.has_prompt and state.pending_corner is None:
        return state
    return _push(state, objects=(ObjectState(label=1),), pending_corner=None)


def undo(state: SessionState) -> SessionState:
    """The state before the last transition (unchanged when there is nothing to undo)."""
    if not state.history:
        return state
    return dataclasses.replace(state.history[-1], history=state.history[:-1])


# ------------------------------------------------------------------------------------------- prediction


MULTIMASK_CHOICES = ("auto", "always", "never")


def wants_multimask(obj: ObjectState, multimask: str = "auto") -> bool:
    """Whether to ask the decoder for its multimask candidates for `obj`'s prompts.

    "auto" follows SAM's advice: several candidates for an ambiguous prompt (a single click, nothing else), the
    single-mask output once the prompt is unambiguous (several clicks, or a box), where it is better.
    """
    if multimask not in MULTIMASK_CHOICES:
        raise InputError(f"multimask must be one of {MULTIMASK_CHOICES}, got {multimask!r}")
    if multimask == "auto":
        return len(obj.clicks) == 1 and obj.box is None
    return multimask == "always"


def predict_kwargs(state: SessionState, policy: ProcessingPolicy, multimask: str = "auto") -> dict[str, Any] | None:
    """Keyword arguments of `Predictor.predict` for the active object, or None when it has no prompt.

    The object's previous prediction, when there is one, is fed back: the chosen candidate's low-res logits
    through `processing.mask_prompt_from_logits`, in the family's mask-prompt convention.

    Args:
        state: the session.
        policy: the bundle's processing policy.
        multimask: "auto", "always" or "never" (see `wants_multimask`).

    Returns:
        {"point_coords": N x 2 float32, "point_labels": (N,) int64, "box": (4,) float32 or None,
        "mask_input": L x L float32 or None, "multimask_output": bool}, or None.
    """
    obj = state.active
    if not obj.has_prompt:
        return None
    kwargs: dict[str, Any] = {"point_coords": None, "point_labels": None, "box": None, "mask_input": None,
                              "multimask_output": wants_multimask(obj, multimask)}
    if obj.clicks:
        kwargs["point_coords"] = np.array([[c.x, c.y] for c in obj.clicks], dtype=np.float32)
        kwargs["point_labels"] = np.array([1 if c.positive else 0 for c in obj.clicks], dtype=np.int64)
    if obj.box is not None:
        kwargs["box"] = np.array(obj.box, dtype=np.float32)
    if obj.prediction is not None:
        kwargs["mask_input"] = mask_prompt_from_logits(obj.prediction.low_res[obj.chosen], policy)
    return kwargs


def with_prediction(state: SessionState, prediction: Prediction) -> SessionState:
    """Store a prediction for the active object and choose its best candidate (highest predicted IoU).

    This completes the transition that made the object pending, so nothing is pushed onto the undo stack.

    Raises:
        InputError: the masks do not have the image's size.
    """
    if tuple(prediction.masks.shape[1:]) != state.size:
        raise InputError(f"masks of {prediction.masks.shape[1:]} do not match the image's {state.size}")
    best = int(np.argmax(prediction.iou))
    return dataclasses.replace(state, objects=_with_active(state, prediction=prediction, chosen=best, pending=False))


# ------------------------------------------------------------------------------------------- queries


def object_masks(state: SessionState) -> list[tuple[int, np.ndarray]]:
    """(label, H x W bool mask) of every object that has a mask, in label order of creation."""
    return [(obj.label, obj.mask) for obj in state.objects if obj.mask is not None]


def label_map(state: SessionState) -> np.ndarray:
    """H x W label map of all objects (0 background); where objects overlap, the later object wins.

    Returns:
        uint8 when every label is <= 255, else uint16.
    """
    masks = object_masks(state)
    top = max((label for label, _ in masks), default=0)
    labels = np.zeros(state.size, dtype=np.uint8 if top <= 255 else np.uint16)
    for label, mask in masks:
        labels[mask] = label
    return labels


def mask_digest(mask: np.ndarray) -> str:
    """sha256 (hex) of an H x W mask as row-major uint8 0/1 bytes, to compare masks across processes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(mask, dtype=bool), dtype=np.uint8).tobytes()).hexdigest()


def summary(state: SessionState) -> dict[str, Any]:
    """JSON-ready description of the state: size, objects with their prompts, candidates and mask digests."""
    objects = []
    for obj in state.objects:
        mask = obj.mask
        entry: dict[str, Any] = {
            "label": obj.label,
            "clicks": [[c.x, c.y, int(c.positive)] for c in obj.clicks],
            "box": list(obj.box) if obj.box is not None else None,
            "iou": [round(float(v), 4) for v in obj.prediction.iou] if obj.prediction is not None else [],
            "chosen": obj.chosen if obj.prediction is not None else None,
            "pixels": int(mask.sum()) if mask is not None else 0,
            "sha256": mask_digest(mask) if mask is not None else None,
        }
        objects.append(entry)
    return {
        "size": list(state.size),
        "objects": objects,
        "active": len(state.objects) - 1,
        "pending_corner": list(state.pending_corner) if state.pending_corner is not None else None,
        "undo": len(state.history),
    }
