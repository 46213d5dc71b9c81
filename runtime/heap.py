"""Hand freed heap memory back to the operating system (glibc's `malloc_trim`).

An encode frees temporaries on the backend's worker threads, and glibc keeps such memory in per-thread arenas,
so a process's resident size creeps up by what the next encode happens to miss. Trimming after each
encode keeps it at what is really in use (measured on an OpenVINO int8 bundle: about 10 MiB lower peak over
a session of five images, docs/benchmarks.md#memory). Elsewhere (macOS, Windows, musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Callable


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_heap() -> bool:
    """Return free heap pages to the OS; True where the C library can (glibc), False where this is a no-op."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
