"""Sessions of the service: an unguessable id per uploaded image, LRU-bounded, expiring after a time unused.

A `Session` holds what the service keeps of one image: the image as read (for the mask writers and for
re-encoding it elsewhere), the model-side handle of its embedding, and its last prediction (the best mask and its
low-res logits, the next click's mask prompt). Its asyncio lock serialises its own predicts; different sessions never
share state. `SessionStore` is thread-safe and remembers recently dropped ids so that a client is told its
session expired or was evicted rather than that it never existed.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sammed_edge.runtime.io.loading import LoadedImage

# Dropped ids remembered for a clearer 404 (a few KB).
TOMBSTONES = 1024


class UnknownSession(KeyError):
    """No such session (never created, deleted, expired or evicted); the message says which."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(eq=False)
class Session:
    """One uploaded image and its interaction state.

    Attributes:
        id: the session id (URL-safe, 128 bits of randomness).
        name: the upload's file name as read.
        loaded: the image as the runtime's reader returned it (H x W x 3 uint8 and its DICOM / NIfTI source).
        handle: the model side's hold on the embedding (a `Predictor` in-process; unused under Ray).
        last_mask: H x W bool of the last predict's best mask, or None.
        last_low_res: L x L float32 logits of that mask, or None.
        extra: room for the deployment's own per-session data (e.g. an object-store reference).
    """

    id: str
    name: str
    loaded: LoadedImage
    handle: Any = None
    last_mask: np.ndarray | None = None
    last_low_res: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    used: float = 0.0

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the image."""
        return int(self.loaded.image.shape[0]), int(self.loaded.image.shape[1])


def new_session_id() -> str:
    return secrets.token_urlsafe(16)


class SessionStore:
    """At most `max_sessions` sessions, least recently used dropped first, each expiring `ttl` s after its last use.

    Args:
        max_sessions: capacity (>= 1).
        ttl: seconds a session may stay unused (> 0).
        on_drop: called with (session, reason) for every session removed ("lru", "ttl" or "deleted"), outside
            the store's lock.
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(self, max_sessions: int, ttl: float, on_drop: Callable[[Session, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1 or ttl <= 0:
            raise ValueError("max_sessions must be >= 1 and ttl > 0")
        self.max_sessions = max_sessions
        self.ttl = ttl
        self._on_drop = on_drop
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._dropped: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def add(self, session: Session) -> None:
        """Store a new session, evicting the least recently used ones beyond capacity."""
        dropped = []
        with self._lock:
            session.used = self._clock()
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                dropped.append((old, "lru"))
                self._tombstone(old.id, "lru")
        self._notify(dropped)

    def get(self, session_id: str) -> Session:
        """The session, marked as used now.

        Raises:
            UnknownSession: no such session (the message says whether it expired, was evicted or deleted).
        """
        dropped = []
        with self._lock:
            session = self._sessions.get(session_id)
            now = self._clock()
            if session is not None and now - session.used > self.ttl:
                del self._sessions[session_id]
                self._tombstone(session_id, "ttl")
                dropped.append((session, "ttl"))
                session = None
            if session is not None:
                session.used = now
                self._sessions.move_to_end(session_id)
            reason = self._dropped.get(session_id)
        self._notify(dropped)
        if session is None:
            raise UnknownSession(self._message(session_id, reason))
        return session

    def delete(self, session_id: str) -> Session:
        """Remove a session.

        Raises:
            UnknownSession: no such session.
        """
        with self._lock:
            session = self._sessions.pop(session_id, None)
            reason = self._dropped.get(session_id)
            if session is not None:
                self._tombstone(session_id, "deleted")
        if session is None:
            raise UnknownSession(self._message(session_id, reason))
        self._notify([(session, "deleted")])
        return session

    def expire(self) -> int:
        """Drop every session unused for more than `ttl` seconds; returns how many."""
        with self._lock:
            now = self._clock()
            old = [s for s in self._sessions.values() if now - s.used > self.ttl]
            for session in old:
                del self._sessions[session.id]
                self._tombstone(session.id, "ttl")
        self._notify([(s, "ttl") for s in old])
        return len(old)

    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def _tombstone(self, session_id: str, reason: str) -> None:
        self._dropped[session_id] = reason
        while len(self._dropped) > TOMBSTONES:
            self._dropped.popitem(last=False)

    def _notify(self, dropped: list[tuple[Session, str]]) -> None:
        if self._on_drop is not None:
            for session, reason in dropped:
                self._on_drop(session, reason)

    def _message(self, session_id: str, reason: str | None) -> str:
        shown = session_id if len(session_id) <= 64 else session_id[:64] + "…"
        if reason == "ttl":
            return f"session {shown} expired (unused for more than {self.ttl:g} s); upload the image again"
        if reason == "lru":
            return f"session {shown} was evicted (the server keeps at most {self.max_sessions} sessions); upload the image again"
        if reason == "deleted":
            return f"session {shown} was deleted"
        return f"unknown session {shown}"
