"""The supervisor's view of one worker process: which task it holds, and how it ended.

The supervisor owns these handles, so at every moment it knows exactly which process holds which
task; nothing is inferred from shared state.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..models import Task

#: Signals held back while forking, so a child never runs the supervisor's handlers.
_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclass
class Assignment:
    """A task handed to a worker, with the duplicates that get its output."""

    task: Task
    duplicates: list[Task] = field(default_factory=list)
    started: float = 0.0

    @property
    def tasks(self) -> list[Task]:
        return [self.task, *self.duplicates]


class WorkerHandle:
    """A worker process and the pipe to it, as the supervisor sees them."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection, started: float) -> None:
        self.process = process
        self.conn = conn
        self.started = started
        self.ready = False
        self.assignment: Assignment | None = None
        #: Why it is leaving on its own ("max tasks per child reached", ...), once it said so.
        self.retiring: str | None = None
        #: Why the supervisor killed it ("timed out after 5 s", ...), so its death is explained.
        self.kill_reason: str | None = None
        self.stop_sent = False
        #: Its boefje returned and it is delivering the output: it will be idle within a request.
        self.finishing = False

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    @property
    def idle(self) -> bool:
        return self.ready and self.assignment is None and self.retiring is None and not self.stop_sent

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def send(self, message: tuple[Any, ...]) -> bool:
        """Send to the worker; False when its end of the pipe is gone (it died)."""
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            return False
        return True

    def kill(self, reason: str) -> None:
        self.kill_reason = self.kill_reason or reason
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def spawn(target: Any, args: tuple[Any, ...]) -> multiprocessing.process.BaseProcess:
    """Fork a worker with the termination signals blocked around the fork.

    The child installs its own handlers and then unblocks them (see ``worker.install_signals``), so
    there is no moment at which a SIGTERM meant for the supervisor runs the supervisor's handler
    inside a child. Fork (not spawn) so workers share the supervisor's imported pages.
    """
    context = multiprocessing.get_context("fork")
    process = context.Process(target=target, args=args, daemon=False)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return process


def start_worker(main: Any, spec: Any, now: float) -> WorkerHandle:
    """Fork a worker running ``main(conn, spec, supervisor_pid)`` and return the supervisor's handle."""
    parent_end, child_end = multiprocessing.get_context("fork").Pipe()
    process = spawn(main, (child_end, spec, os.getpid()))
    child_end.close()
    return WorkerHandle(process, parent_end, now)


def describe_exit(exitcode: int | None, *, oom_kills: int = 0) -> str:
    """Say how a process ended, for one log line or an error file."""
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
            text += "; if nobody sent it, the kernel's OOM killer is the likely cause"
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
