import platform
import threading

import numpy as np
import pytest

from sammed_edge.runtime.heap import release_free_heap
from sammed_edge.runtime.sysinfo import peak_rss_mb


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_returns_freed_arena_memory():
    # A worker thread allocates 48 MiB in 32 KiB blocks (below glibc's mmap threshold, so they live in the thread's
    # arena) and frees every other one: the holes cannot be returned by shrinking the heap's top, only by a trim.
    kept = []

    def worker() -> None:
        blocks = [np.ones(8192, np.float32) for _ in range(1536)]
        kept.extend(blocks[1::2])
        del blocks

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    before = _rss_mb()
    assert release_free_heap() is True
    assert before - _rss_mb() > 10, "the freed half of the blocks stayed resident"
    assert sum(b.nbytes for b in kept) == 24 * 2**20  # the kept blocks are untouched
    assert peak_rss_mb() is not None


def test_release_free_heap_is_safe_to_call_repeatedly():
    results = {release_free_heap() for _ in range(3)}
    assert len(results) == 1
