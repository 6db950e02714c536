"""``boefje_runtime.libc``: prctl and malloc_trim through ctypes, each in a child Python process (this
test process keeps its own flags and heap)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux (glibc) calls")

#: Frees 40 MB of heap chunks (below glibc's mmap threshold, so they come from the heap) between
#: chunks still in use, and prints
#: RssAnon (KiB) after the free and after trim_heap.
TRIM = """
import gc
from boefje_runtime import libc

def rss_anon():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))

chunks, spacers = [], []
for _ in range(640):  # a small heap chunk kept after each big one: the freed ones are holes, not the top,
    chunks.append(bytearray(64 * 1024))  # which glibc would give back by itself
    spacers.append(bytearray(1024))
del chunks
gc.collect()
before = rss_anon()
print(before, rss_anon() if not libc.trim_heap() else rss_anon())
"""

PRCTL = """
import ctypes
from boefje_runtime import libc
value = ctypes.c_int(-1)
print(libc.prctl(37, ctypes.byref(value)), value.value)  # PR_GET_CHILD_SUBREAPER
print(libc.prctl(36, 1))  # PR_SET_CHILD_SUBREAPER
libc.prctl(37, ctypes.byref(value))
print(value.value)
"""


def run(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _has_malloc_trim() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "malloc_trim")


@pytest.mark.skipif(not _has_malloc_trim(), reason="no malloc_trim in this C library (musl): trim_heap is a no-op")
def test_trim_heap_gives_free_heap_pages_back():
    before, after = map(int, run(TRIM))
    assert before - after > 20_000, f"RssAnon {before} KiB after the free, {after} KiB after the trim"


def test_prctl_reads_and_sets_a_flag_of_the_calling_process():
    assert run(PRCTL) == ["0", "0", "0", "1"]
