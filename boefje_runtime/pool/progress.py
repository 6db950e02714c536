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
worker maps it. Two processes touch it at once, and no write of ours is atomic (``struct.pack_into``
even zeroes its bytes before it fills them: a reader saw a new task number with a time of 0), so
the record is guarded like a seqlock: the writer makes a sequence number odd, writes the record,
makes it even again; a reader takes a record only when the number was even and the same before and
after it read. Every write is a slice assignment of bytes packed beforehand (one copy, no zeroing).
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import sys
import tempfile
import time

#: The sequence number (odd while the record is being written), then the record: the task number
#: and progress in one word, and the monotonic time of the mark.
_SEQUENCE = struct.Struct("Q")
_RECORD = struct.Struct("Qd")
_SIZE = _SEQUENCE.size + _RECORD.size
#: Reads of a page in the middle of a write before the reader gives up for now (a writer preempted
#: mid-write; the caller reads again at its next step).
_READ_TRIES = 50


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
        # Python 3.13+ maps without keeping a duplicate of ``fd`` (which a child forked without
        # exec, a boefje's, would inherit); before, the duplicate is close-on-exec.
        extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}
        self._map = mmap.mmap(fd, _SIZE, **extra)
        self._sequence = 0  # the writer's own count (one writer per page)

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
            os.ftruncate(fd, _SIZE)
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    def mark(self, task_number: int, progress: Progress) -> None:
        """The worker: task ``task_number`` (counted from 1 per worker) reached ``progress`` now."""
        record = _RECORD.pack(task_number << 2 | progress, time.monotonic())
        self._map[: _SEQUENCE.size] = _SEQUENCE.pack(self._sequence + 1)  # odd: being written
        self._map[_SEQUENCE.size :] = record
        self._sequence += 2
        self._map[: _SEQUENCE.size] = _SEQUENCE.pack(self._sequence)  # even: whole again

    def read(self) -> tuple[int, Progress, float] | None:
        """The last mark: task number, progress, and when (``time.monotonic()`` of the worker); None
        when every try found the record in the middle of a write (read again later)."""
        for _ in range(_READ_TRIES):
            (before,) = _SEQUENCE.unpack_from(self._map, 0)
            if before & 1:
                continue
            tag, at = _RECORD.unpack_from(self._map, _SEQUENCE.size)
            (after,) = _SEQUENCE.unpack_from(self._map, 0)
            if after == before:
                return tag >> 2, Progress(tag & 3), at
        return None

    def close(self) -> None:
        self._map.close()


__all__ = ["Progress", "ProgressPage"]
