"""Processes a boefje leaves behind end with its task.

A boefje may start scanners as child processes and return (or crash) without waiting for them.
The worker makes itself a child subreaper, so such processes (and their orphaned children) stay
its descendants instead of moving to init, and after each task it kills whatever is left. Linux
only; elsewhere this does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time

logger = logging.getLogger("boefje_runtime.worker")

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def children(pid: int) -> list[int]:
    """The children of ``pid`` (all its threads'), from /proc."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{thread}/children") as listing:
            found += [int(child) for child in listing.read().split()]
    return found


def kill_leftovers(deadline: float = 2.0) -> int:
    """SIGKILL every child this process still has and reap it; returns how many were killed.

    Repeats for a few rounds: killing a child re-parents its own children to us (we are the
    subreaper), and they must go too.
    """
    me, killed = os.getpid(), 0
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pids = children(me)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        _reap(end)
    _reap(end)
    return killed


def _reap(end: float) -> None:
    """Collect exit statuses of dead children (without blocking past ``end``)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= end or not children(os.getpid()):
                return
            time.sleep(0.001)
