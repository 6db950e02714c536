"""Where a worker is in its task, written to a page it shares with the supervisor: no message, no wake-up.

Why not messages: each message wakes the supervisor (and switches both processes' contexts), and
"the boefje started" and "the boefje returned" need no action at the moment they happen. Sent as
messages they cost 13 % of the pool's CPU per task (measured on quick tasks: supervisor and workers
both woke twice more per task). So a worker only *records* its progress here, and the supervisor
reads it at each step and whenever a deadline that depends on it comes (messages.py,
``Mailbox.read_progress``): the task timeout still counts from the boefje's start, read from the
worker's own mark, not from when the supervisor happened to look. Only what needs the supervisor
now travels as a message (``ready``, ``done``).

What is and is not inferred from this page: the supervisor still knows who holds which task from
what it handed out and what came back ``done``. The page only moves a holding worker's state
forward (ASSIGNED -> BUSY -> DELIVERING) and dates the move; a mark for another task number than
the one the supervisor handed out is ignored.

The page is a ``memfd`` (Linux; an unlinked file elsewhere), one per worker: the supervisor makes
it, maps it and hands the descriptor to the fork server with the worker's pipe (forkserver.py); the
worker maps it. The record is one 16-byte write (task number and phase in one word, then the
monotonic time of the mark), read the same way.
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import tempfile
import time

_RECORD = struct.Struct("Qd")


class Progress(enum.IntEnum):
    """How far the worker is with the task it numbered."""

    #: Not started yet: the running PATCH is under way.
    NONE = 0
    #: The running PATCH went through; the boefje runs. The task timeout counts from here.
    STARTED = 1
    #: The boefje returned; only delivering its output is left.
    RAN = 2


class ProgressPage:
    """One worker's progress record, shared between the worker (writes) and the supervisor (reads)."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _RECORD.size)

    @classmethod
    def create(cls) -> tuple[ProgressPage, int]:
        """A new zeroed page and its descriptor, for the fork server to hand to the new worker;
        the caller closes the descriptor once the worker has it (the mapping stays)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("boefje-worker-progress", os.MFD_CLOEXEC)
        else:  # pragma: no cover - not Linux: an unlinked file does the same
            with tempfile.TemporaryFile() as file:
                fd = os.dup(file.fileno())
        try:
            os.ftruncate(fd, _RECORD.size)
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    def mark(self, task_number: int, progress: Progress) -> None:
        """The worker: task ``task_number`` (counted from 1 per worker) reached ``progress`` now."""
        _RECORD.pack_into(self._map, 0, task_number << 2 | progress, time.monotonic())

    def read(self) -> tuple[int, Progress, float]:
        """The last mark: task number, progress, and when (``time.monotonic()`` of the worker)."""
        tag, at = _RECORD.unpack_from(self._map, 0)
        return tag >> 2, Progress(tag & 3), at

    def close(self) -> None:
        self._map.close()


__all__ = ["Progress", "ProgressPage"]
