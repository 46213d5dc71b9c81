"""The demo's handlers: load an image, turn clicks into prompts and masks, export results.

`Engine` owns the `Predictor` (shared by every browser session) and applies the pure transitions of `state.py`
to a `DemoSession`, the whole per-browser-session value: the image being segmented, its display geometry, the
interaction state and the last latencies. Every handler takes a session and returns a new one, and raises
`InputError` with a readable message for anything the user can fix, so that the page only has to show it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io.images import WINDOW_PRESETS
from sammed_edge.runtime.io.loading import LoadedImage, file_kind, load_for_segmentation, write_labels_like
from sammed_edge.runtime.io.writers import write_dicom_seg, write_label_png
from sammed_edge.runtime.predictor import Predictor

from . import state as st
from .render import DisplayGeometry, display_geometry, display_to_pixel, to_display

# Largest image the demo segments, in pixels: full-resolution candidate masks and overlays of bigger images make
# every click slow and the page heavy (the runtime itself accepts up to 16384 pixels a side).
MAX_PIXELS = 25_000_000

MODES = ("foreground", "background", "box")
AUTO_WINDOW = "auto"
MANUAL_WINDOW = "manual"
WINDOW_CHOICES = (AUTO_WINDOW, *WINDOW_PRESETS, MANUAL_WINDOW)


def window_value(choice: str | None, level: float | None = None, width: float | None = None) -> str | tuple[float, float] | None:
    """The reader's `window` argument for a window choice of the page: None, a preset name or (level, width).

    Raises:
        InputError: an unknown choice, or a manual window without a positive width.
    """
    if choice in (None, "", AUTO_WINDOW):
        return None
    if choice == MANUAL_WINDOW:
        if level is None or width is None or not np.isfinite([level, width]).all() or width <= 0:
            raise InputError(f"a manual window needs a level and a width > 0, got level={level}, width={width}")
        return float(level), float(width)
    if choice not in WINDOW_PRESETS:
        raise InputError(f"unknown window {choice!r}; choose one of {list(WINDOW_CHOICES)}")
    return choice


@dataclass(frozen=True, eq=False)
class ImageView:
    """The image being segmented and how it was read.

    Attributes:
        path: the file.
        name: the file's name as shown to the user.
        loaded: the reader's result (image H x W x 3 uint8 and, for DICOM / NIfTI, the source geometry).
        display: the image at display size, h x w x 3 uint8.
        geometry: display geometry.
        window: the window it was read with (None: the file's own / automatic).
        index: NIfTI slice or DICOM frame that was read.
        axis: NIfTI slice axis.
        count: slices along `axis` (NIfTI) or frames (DICOM); 1 for raster images.
    """

    path: Path
    name: str
    loaded: LoadedImage
    display: np.ndarray
    geometry: DisplayGeometry
    window: str | tuple[float, float] | None
    index: int
    axis: int
    count: int

    @property
    def kind(self) -> str:
        return self.loaded.kind

    @property
    def image(self) -> np.ndarray:
        return self.loaded.image


@dataclass(frozen=True, eq=False)
class DemoSession:
    """Everything one browser session holds.

    Attributes:
        view: the current image, or None before the first one.
        state: the interaction state of the current image.
        timings: latencies in ms: "encode_ms" (the encoder's last run, for any session), "encode_cached" (the
            current image's embedding came from the cache when it was opened), "decode_ms" (the decoder in the
            last click), "click_cached" (the last click found the embedding in the cache, as it normally does)
            and "click_ms" (the last click's handling in the server, prediction included).
        seq: number of updates so far (the page publishes it so that a client can wait for the next one).
        token: the key of this browser session in a `SessionStore` ("" until it is stored).
        volume: for a NIfTI view, the volume being segmented (`demo.volume.VolumeWork`), else None.
    """

    view: ImageView | None = None
    state: st.SessionState | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    token: str = ""
    volume: Any = None

    def require(self) -> tuple[ImageView, st.SessionState]:
        if self.view is None or self.state is None:
            raise InputError("load an image first (upload a file or pick an example)")
        return self.view, self.state

    def updated(self, **changes: Any) -> "DemoSession":
        return dataclasses.replace(self, seq=self.seq + 1, **changes)


class SessionStore:
    """The latest `DemoSession` of each browser session, by token: the one place both of the page's paths (Gradio
    events and the direct click route) read and write sessions.

    `hold(session)` serialises the updates of one browser session and yields its latest value (a session without
    a token gets one); `put` inside it records the next value. The `capacity` most recently used sessions are
    kept; older ones are dropped (their page then asks to reload).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._sessions: OrderedDict[str, tuple[DemoSession, str | None]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def latest(self, token: str) -> tuple[DemoSession, str | None] | None:
        """The latest session of `token` and the error its last update raised, or None when unknown."""
        with self._lock:
            found = self._sessions.get(token)
            if found is not None:
                self._sessions.move_to_end(token)
            return found

    @contextmanager
    def hold(self, session: DemoSession) -> Iterator[DemoSession]:
        """Lock `session`'s browser session and yield its latest value (newer than `session` when the other path
        updated it meanwhile)."""
        if not session.token:
            session = dataclasses.replace(session, token=secrets.token_urlsafe(16))
        with self._lock:
            lock = self._locks.setdefault(session.token, threading.Lock())
        with lock:
            stored = self.latest(session.token)
            yield stored[0] if stored is not None and stored[0].seq >= session.seq else session

    def put(self, session: DemoSession, error: str | None = None) -> None:
        """Record `session` (with the error of the update that produced it, if any) as its token's latest."""
        if not session.token:
            raise ValueError("a session must have a token to be stored (use hold())")
        with self._lock:
            self._sessions[session.token] = (session, error)
            self._sessions.move_to_end(session.token)
            while len(self._sessions) > self.capacity:
                dropped, _ = self._sessions.popitem(last=False)
                self._locks.pop(dropped, None)


def _stem(name: str) -> str:
    stem = re.sub(r"(\.nii\.gz|\.nii|\.dcm|\.dicom|\.ima|\.png|\.jpe?g|\.tiff?)$", "", name, flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem) or "image"


def _check_raster_size(path: Path) -> None:
    """Refuse a huge raster image from its header, before decoding it."""
    try:
        from PIL import Image  # Pillow comes with Gradio; the runtime itself does not need it

        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - not readable by Pillow: the runtime's reader reports the real problem
        return
    if width * height > MAX_PIXELS:
        raise InputError(
            f"{path.name} is {width} x {height} pixels ({width * height / 1e6:.0f} MP); the demo takes images of "
            f"up to {MAX_PIXELS / 1e6:.0f} MP (crop or downscale it first)"
        )


class Engine:
    """The demo's handlers over one `Predictor`.

    Args:
        predictor: the runtime predictor (its embedding cache makes returning to an image instant).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        # set_image + predict must not interleave between browser sessions: the predictor has one current image.
        self._lock = threading.Lock()
        self.last_encode_ms: float | None = None

    @property
    def lock(self) -> threading.Lock:
        """Held around every set_image + predict on the shared predictor (the volume work holds it too)."""
        return self._lock

    @classmethod
    def from_bundle(cls, path: str | Path, cache_size: int = 32, threads: int | None = None) -> "Engine":
        """Handlers over `Predictor.from_bundle(path)` keeping `cache_size` image embeddings."""
        return cls(Predictor.from_bundle(path, threads=threads, cache_size=cache_size))

    # -- images ---------------------------------------------------------------------------------------
    def open(
        self,
        session: DemoSession,
        path: str | Path,
        window: str | tuple[float, float] | None = None,
        index: int | None = None,
        axis: int = 2,
    ) -> DemoSession:
        """Read an image file, encode it, and start a fresh interaction state.

        Args:
            session: the current session (its timings carry over).
            path: PNG / JPEG / TIFF, DICOM or NIfTI file.
            window: DICOM / NIfTI window (None, a preset name or (level, width)); ignored for raster images.
            index: NIfTI slice (default: the middle one) or DICOM frame (default 0).
            axis: NIfTI slice axis 0, 1 or 2.

        Raises:
            InputError: unreadable or unsupported file, an image too large for the demo, bad options.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path.name} does not exist or is not a file")
        kind = file_kind(path)
        if kind == "raster":
            _check_raster_size(path)
            window = None
        try:
            if kind == "dicom":
                loaded = load_for_segmentation(path, window=window, frame=int(index or 0))
            else:
                loaded = load_for_segmentation(path, window=window, index=None if index is None else int(index), axis=int(axis))
        except ImportError as exc:
            raise InputError(f"reading {path.name} needs an optional package: {exc}") from exc
        height, width = loaded.image.shape[:2]
        if height * width > MAX_PIXELS:
            raise InputError(
                f"{path.name} is {width} x {height} pixels; the demo takes images of up to {MAX_PIXELS / 1e6:.0f} MP"
            )
        if kind == "nifti":
            count, current = loaded.source.volume_shape[loaded.source.axis], loaded.source.index
        elif kind == "dicom":
            count, current = loaded.source.num_frames, loaded.source.frame
        else:
            count, current = 1, 0
        geometry = display_geometry((height, width))
        view = ImageView(path, path.name, loaded, to_display(loaded.image, geometry), geometry,
                         window, int(current), int(axis), int(count))
        with self._lock:
            hits = self.predictor.cache_hits
            self.predictor.set_image(loaded.image)
            cached = self.predictor.cache_hits > hits
            if not cached:
                self.last_encode_ms = float(self.predictor.timings.get("encode_ms", 0.0))
        timings: dict[str, Any] = {"encode_cached": cached}
        if self.last_encode_ms is not None:
            timings["encode_ms"] = self.last_encode_ms
        return session.updated(view=view, state=st.new_session((height, width)), timings=timings)

    def reslice(
        self,
        session: DemoSession,
        window: str | tuple[float, float] | None = None,
        index: int | None = None,
        axis: int | None = None,
    ) -> DemoSession:
        """Read another slice / frame, axis or window of the current file (a fresh interaction state).

        A slice seen recently comes from the predictor's embedding cache without running the encoder.
        Changing the axis starts at that axis's middle slice.
        """
        view, _ = session.require()
        axis = view.axis if axis is None else int(axis)
        if view.kind == "nifti" and axis != view.axis:
            index = None
        return self.open(session, view.path, window=window, index=index, axis=axis)

    # -- prompts --------------------------------------------------------------------------------------
    def click(
        self,
        session: DemoSession,
        index: tuple[float, float] | list[float],
        mode: str = "foreground",
        multimask: str = "auto",
    ) -> DemoSession:
        """Handle a click at pixel `index` = (x, y) of the displayed image.

        Args:
            session: the current session.
            index: Gradio's `SelectData.index` on the displayed image.
            mode: "foreground" / "background" click, or "box" (the click is a box corner).
            multimask: "auto" (candidates for a lone click only), "always" or "never" (`state.wants_multimask`).

        Raises:
            InputError: no image, an unknown mode, or a prompt the predictor rejects.
        """
        start = time.perf_counter()
        view, state = session.require()
        if mode not in MODES:
            raise InputError(f"unknown click mode {mode!r}; expected one of {MODES}")
        x, y = display_to_pixel(index, view.geometry)
        if mode == "box":
            state = st.box_corner(state, x, y)
        else:
            state = st.click(state, x, y, positive=(mode == "foreground"))
        timings = dict(session.timings)
        if state.active.pending:
            state, timings["decode_ms"], timings["click_cached"] = self._predict(view, state, multimask)
        timings["click_ms"] = (time.perf_counter() - start) * 1e3
        return session.updated(state=state, timings=timings)

    def _predict(self, view: ImageView, state: st.SessionState, multimask: str) -> tuple[st.SessionState, float, bool]:
        """Run the decoder for the active object; returns the new state, decoder ms and whether the image's
        embedding came from the cache (else the encoder ran again: other images pushed it out)."""
        kwargs = st.predict_kwargs(state, self.predictor.policy, multimask=multimask)
        if kwargs is None:
            return state, 0.0, True
        with self._lock:
            # Another session may have set its own image since; this is normally a cache hit (a hash of the image).
            hits = self.predictor.cache_hits
            self.predictor.set_image(view.image)
            cached = self.predictor.cache_hits > hits
            if not cached:
                self.last_encode_ms = float(self.predictor.timings.get("encode_ms", 0.0))
            masks, iou, low_res = self.predictor.predict(**kwargs)
            decode_ms = float(self.predictor.timings.get("predict_ms", 0.0))
        return st.with_prediction(state, st.Prediction(masks, iou, low_res)), decode_ms, cached

    def choose(self, session: DemoSession, index: int) -> DemoSession:
        """Make mask candidate `index` (0-based) the active object's mask."""
        _, state = session.require()
        return session.updated(state=st.choose(state, int(index)))

    def undo(self, session: DemoSession) -> DemoSession:
        _, state = session.require()
        return session.updated(state=st.undo(state))

    def reset(self, session: DemoSession) -> DemoSession:
        _, state = session.require()
        return session.updated(state=st.reset(state))

    def new_object(self, session: DemoSession) -> DemoSession:
        _, state = session.require()
        return session.updated(state=st.new_object(state))

    # -- results --------------------------------------------------------------------------------------
    def export(self, session: DemoSession, fmt: str, folder: str | Path) -> Path:
        """Write the objects of the current image.

        Args:
            session: the current session.
            fmt: "png" (label map of all objects: 0 background, object k = label k), "nifti" (the same label
                map as NIfTI aligned with a DICOM / NIfTI input) or "dicom-seg" (one segment per object, for a
                DICOM input; needs highdicom).
            folder: where to write.

        Returns:
            The file written.

        Raises:
            InputError: nothing segmented yet, a format that does not apply to this input, or highdicom
                missing.
        """
        view, state = session.require()
        masks = st.object_masks(state)
        if not masks:
            raise InputError("nothing to export yet: click on the image to segment an object")
        stem = Path(folder) / _stem(view.name)
        suffix = f"-slice{view.index}" if view.kind == "nifti" else ""
        if fmt == "png":
            return write_label_png(f"{stem}{suffix}-labels.png", st.label_map(state))
        if fmt == "nifti":
            return write_labels_like(f"{stem}{suffix}-labels.nii.gz", st.label_map(state), view.loaded)
        if fmt == "dicom-seg":
            if view.kind != "dicom":
                raise InputError("DICOM-SEG needs a DICOM input image")
            stack = np.stack([mask for _, mask in masks])
            names = [f"Object {label}" for label, _ in masks]
            try:
                return write_dicom_seg(f"{stem}-seg.dcm", stack, view.loaded.source, labels=names)
            except ImportError as exc:
                raise InputError(f"DICOM-SEG export needs highdicom: pip install 'sammed-edge[dicomseg]' ({exc})") from exc
        raise InputError(f"unknown export format {fmt!r}; expected png, nifti or dicom-seg")


def dicom_seg_available() -> bool:
    """Whether highdicom is installed (DICOM-SEG export)."""
    import importlib.util

    return importlib.util.find_spec("highdicom") is not None
