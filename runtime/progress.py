"""A dependency-free progress bar on stderr for long loops (evaluation, calibration, export checks)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], label: str, total: int | None = None, enabled: bool = True, stream=None) -> Iterator[T]:
    """Yield `items`, redrawing `label [#####     ] 12/40 3.1 it/s` on one stderr line (or nothing when disabled).

    Use `ProgressBar` directly when the loop wants to show running metrics in a postfix.
    """
    bar = ProgressBar(label, total if total is not None else _length(items), enabled=enabled, stream=stream)
    try:
        for item in items:
            yield item
            bar.advance()
    finally:
        bar.close()


def _length(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


class ProgressBar:
    """Progress line with an optional postfix (e.g. a running Dice), redrawn at most 10 times a second."""

    def __init__(self, label: str, total: int | None, enabled: bool = True, stream=None, width: int = 24) -> None:
        self.label, self.total, self.enabled, self.width = label, total, enabled, width
        self.stream = stream or sys.stderr
        self.count = 0
        self.postfix = ""
        self.start = self._last = time.perf_counter()
        self._drawn = False

    def advance(self, steps: int = 1, postfix: str | None = None) -> None:
        self.count += steps
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if self.enabled and (now - self._last >= 0.1 or self.count == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self.start, 1e-9)
        if self.total:
            filled = int(self.width * self.count / self.total)
            bar = f"[{'#' * filled}{' ' * (self.width - filled)}] {self.count}/{self.total}"
        else:
            bar = f"{self.count}"
        self.stream.write(f"\r{self.label} {bar} {rate:.1f} it/s {self.postfix}".rstrip() + " ")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
