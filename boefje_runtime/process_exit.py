"""How a process ended, in words for one log line or an error file, for every mode; and how one of
ours ends itself (:func:`exit_now`).

One-shot's supervised child and worker mode's workers die the same ways (an exit code, a signal, the
kernel's OOM killer), so one function says it and one counter decides whether "out of memory" is a
fact (the cgroup's ``oom_kill`` count went up) or only a guess.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import NoReturn


def describe_exit(exitcode: int | None, *, oom_kills: int = 0) -> str:
    """Say how a process ended on its own, for one log line or an error file.

    Only for deaths the supervisor did not cause: a kill the runtime made itself is explained by
    its own reason, never by a guess at the OOM killer.
    """
    if exitcode is None:
        return "is still running"
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        name = signal.Signals(-exitcode).name
    except ValueError:
        name = f"signal {-exitcode}"
    text = f"was killed by {name} ({-exitcode})"
    if exitcode == -signal.SIGKILL:
        if oom_kills:
            text += "; the kernel's OOM killer killed a process of this container just now (out of memory)"
        else:
            text += "; the runtime did not send it: if nobody else did, the kernel's OOM killer is the likely cause"
    return text


class OomCounter:
    """Reads the cgroup's ``oom_kill`` count, to say "OOM" only when the kernel says so."""

    PATHS = ("/sys/fs/cgroup/memory.events",)

    def __init__(self) -> None:
        self._last = self._read()

    def _read(self) -> int | None:
        for path in self.PATHS:
            try:
                with open(path) as events:
                    for line in events:
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
            except (OSError, ValueError):
                continue
        return None

    def new_kills(self) -> int:
        """OOM kills since the last call (0 when the counter is not readable)."""
        current = self._read()
        if current is None or self._last is None:
            return 0
        new, self._last = current - self._last, current
        return max(new, 0)


def exit_now(code: int) -> NoReturn:
    """End this process with ``code`` at once: flush what Python holds for stdout and stderr, then
    ``os._exit``, without the interpreter's teardown.

    For a forked child (its parent's atexit handlers and buffers are not its own to run or write
    twice), and for a one-shot run whose work is done: tearing down every module of ``requests``
    costs more CPU than the task's own HTTP (see benchmarks/oneshot_child.py).
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(code)
