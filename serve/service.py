"""What the HTTP routes call: sessions, bounded encoding, predicts and mask files, in one process or over Ray.

`Service` owns everything that does not depend on where the model runs: the session store (LRU + TTL), the
upload limits, the bounded encode queue (a full queue answers `Busy`, HTTP 503 with Retry-After, instead of
piling requests up), the previous-mask feedback, the response shapes and the mask writers. Subclasses say how to
encode a session's image and run its decoder: `LocalService` on an in-process `engine.Engine` with two thread
pools (encodes apart from clicks, so uploads never starve clicks), `ray_app.RayService` on Ray Serve replicas.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammed_edge.runtime.errors import InputError
from sammed_edge.runtime.io.loading import write_labels_like
from sammed_edge.runtime.io.rle import encode_rle
from sammed_edge.runtime.io.writers import write_dicom_seg, write_mask_png

from .engine import Engine, Prediction, Prompt
from .metrics import Metrics
from .sessions import Session, SessionStore, new_session_id
from .uploads import Options, decode_upload

MASK_FORMATS = {"png": ("image/png", ".png"), "nifti": ("application/gzip", ".nii.gz"), "dicom-seg": ("application/dicom", ".dcm")}


@dataclass(frozen=True)
class Limits:
    """The service's bounds.

    Attributes:
        max_sessions: sessions held at once (least recently used evicted first).
        session_ttl: seconds a session may stay unused before it expires.
        max_upload_bytes: largest request body accepted.
        max_pixels: largest image (pixels per plane), checked from the file's header before decoding.
        encode_workers: encodes running at once.
        encode_queue: encodes waiting beyond those; more are refused with 503.
        predict_workers: threads running predicts (different sessions in parallel).
        retry_after: seconds a refused client is told to wait.
    """

    max_sessions: int = 64
    session_ttl: float = 1800.0
    max_upload_bytes: int = 64 << 20
    max_pixels: int = 25_000_000
    encode_workers: int = 1
    encode_queue: int = 4
    predict_workers: int = 4
    retry_after: int = 2


class Busy(Exception):
    """The encode queue is full (HTTP 503); `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Service:
    """Sessions and their requests; subclasses implement `_encode`, `_predict` and `ready`."""

    def __init__(self, limits: Limits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics or Metrics()
        self.store = SessionStore(limits.max_sessions, limits.session_ttl, on_drop=self._dropped)
        self._encode_slots = threading.BoundedSemaphore(limits.encode_workers + limits.encode_queue)
        self._encode_pool = ThreadPoolExecutor(limits.encode_workers, thread_name_prefix="sammed-encode")
        self._io_pool = ThreadPoolExecutor(limits.predict_workers, thread_name_prefix="sammed-predict")

    # -- to implement ---------------------------------------------------------------------------------
    async def _encode(self, session: Session) -> float:
        """Encode the session's image where the model runs; returns the encoder's ms."""
        raise NotImplementedError

    async def _predict(self, session: Session, prompt: Prompt, previous: np.ndarray | None) -> Prediction:
        raise NotImplementedError

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(ready, facts): the bundle is loaded and verified and the model answers."""
        raise NotImplementedError

    def _release(self, session: Session) -> None:
        """Free what the model side holds for a dropped session."""

    # -- the API --------------------------------------------------------------------------------------
    async def create(self, data: bytes, filename: str | None, options: Options) -> dict[str, Any]:
        """Decode an upload, encode it once, and open a session.

        Raises:
            Busy: the encode queue is full.
            InputError / uploads.TooLarge: a bad or too large file.
        """
        if not self._encode_slots.acquire(blocking=False):
            raise Busy(f"the encoder queue is full ({self.limits.encode_workers} running, {self.limits.encode_queue} "
                       f"waiting); retry in {self.limits.retry_after} s", self.limits.retry_after)
        try:
            loop = asyncio.get_running_loop()
            loaded, name = await loop.run_in_executor(self._encode_pool, decode_upload, data, filename, options,
                                                      self.limits.max_pixels)
            session = Session(new_session_id(), name, loaded)
            encode_ms = await self._encode(session)
        finally:
            self._encode_slots.release()
        self.metrics.encode.observe(encode_ms / 1e3)
        self.store.expire()  # besides the app's periodic sweep, which not every host runs
        self.store.add(session)
        self.metrics.open_sessions.set(len(self.store))
        height, width = session.size
        created = {"session": session.id, "height": height, "width": width, "encode_ms": round(encode_ms, 3)}
        if "replica" in session.extra:
            created["replica"] = session.extra["replica"]
        return created

    async def predict(self, session_id: str, prompt: Prompt, use_previous_mask: bool = False) -> dict[str, Any]:
        """Masks for prompts on a session's image, best predicted IoU first, as COCO RLE.

        Raises:
            sessions.UnknownSession: no such session.
            InputError: bad prompts, or use_previous_mask before any mask.
        """
        start = time.perf_counter()
        session = self.store.get(session_id)
        loop = asyncio.get_running_loop()
        # one predict of a session at a time, so that use_previous_mask sees the mask of the call before it
        async with session.lock:
            previous = None
            if use_previous_mask:
                if session.last_low_res is None:
                    raise InputError("use_previous_mask is set but this session has no mask yet: predict once without it")
                previous = session.last_low_res
            prediction = await self._predict(session, prompt, previous)
            session.last_mask, session.last_low_res = prediction.masks[0], prediction.low_res[0]
        self.metrics.decode.observe(prediction.timings_ms.get("decode", 0.0) / 1e3)
        masks = await loop.run_in_executor(self._io_pool, _rle_masks, prediction)
        timings = {**prediction.timings_ms, "server": (time.perf_counter() - start) * 1e3}
        return {"masks": masks, "timings_ms": {k: round(v, 3) for k, v in timings.items()}}

    async def mask(self, session_id: str, fmt: str) -> tuple[bytes, str, str]:
        """The session's last mask as a file: (content, media type, file name).

        Raises:
            sessions.UnknownSession: no such session.
            InputError: unknown format, no mask yet, or a format that does not apply to the image.
        """
        if fmt not in MASK_FORMATS:
            raise InputError(f"unknown mask format {fmt!r}; choose one of {sorted(MASK_FORMATS)}")
        session = self.store.get(session_id)
        if session.last_mask is None:
            raise InputError("this session has no mask yet: call predict first")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_pool, write_mask_file, session, fmt)

    async def delete(self, session_id: str) -> None:
        self.store.delete(session_id)
        self.metrics.open_sessions.set(len(self.store))

    def expire(self) -> int:
        count = self.store.expire()
        self.metrics.open_sessions.set(len(self.store))
        return count

    def close(self) -> None:
        self._encode_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=False, cancel_futures=True)

    def _dropped(self, session: Session, reason: str) -> None:
        self.metrics.dropped.labels(reason).inc()
        self._release(session)


def _rle_masks(prediction: Prediction) -> list[dict[str, Any]]:
    return [{"rle": encode_rle(mask), "iou": float(iou)} for mask, iou in zip(prediction.masks, prediction.iou)]


def write_mask_file(session: Session, fmt: str) -> tuple[bytes, str, str]:
    """Write a session's last mask with the runtime's writers; returns (content, media type, file name).

    Raises:
        InputError: a format that does not apply (NIfTI needs DICOM or NIfTI input, DICOM-SEG a DICOM one).
    """
    media, suffix = MASK_FORMATS[fmt]
    stem = session.name.split(".")[0] or "image"
    mask = session.last_mask
    with tempfile.TemporaryDirectory(prefix="sammed-mask-") as folder:
        path = Path(folder) / f"{stem}-mask{suffix}"
        if fmt == "png":
            write_mask_png(path, mask)
        elif fmt == "nifti":
            write_labels_like(path, mask.astype(np.uint8), session.loaded)
        else:
            if session.loaded.kind != "dicom":
                raise InputError("a DICOM-SEG mask needs a DICOM upload")
            try:
                write_dicom_seg(path, mask, session.loaded.source)
            except ImportError as exc:
                raise InputError(f"DICOM-SEG output needs highdicom on the server: {exc}") from None
        return path.read_bytes(), media, path.name


class LocalService(Service):
    """The service on an in-process engine: encodes in their own bounded pool, predicts in a thread pool.

    Args:
        engine: the loaded bundle.
        limits: the service's bounds.
    """

    def __init__(self, engine: Engine, limits: Limits, metrics: Metrics | None = None) -> None:
        super().__init__(limits, metrics)
        self.engine = engine

    async def _encode(self, session: Session) -> float:
        loop = asyncio.get_running_loop()
        session.handle, encode_ms = await loop.run_in_executor(self._encode_pool, self.engine.encode, session.loaded.image)
        return encode_ms

    async def _predict(self, session: Session, prompt: Prompt, previous: np.ndarray | None) -> Prediction:
        # a dropped session's embedding is freed with the session object, after any predict still running on it
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io_pool, self.engine.predict, session.handle, prompt, previous)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        facts = self.engine.describe()
        return True, {"model": facts.get("model"), "target": facts.get("target", {}).get("name"), "verified": True}
