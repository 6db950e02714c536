"""The supervisor's handle on one worker process: its state, the task it holds, how it is killed.

The supervisor owns these handles, so at every moment it knows exactly which process holds which
task; nothing of that is inferred from shared state (the progress page, progress.py, only says how
far the holder is with it). :func:`start_worker` is the one place a worker
process is made: the fork server forks it (forkserver.py).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any

from .. import process_tree
from ..models import Task
from .lifecycle import FREE_SOON, HOLDS_TASK, STAYS, TAKES_TASK, Bounds, WorkerState, check
from .progress import ProgressPage

if TYPE_CHECKING:
    from .forkserver import ForkedProcess, ForkServer



#: The largest task message sent to a worker ahead (``WorkerHandle.next``): one that the kernel
#: writes into the next-task pipe, and the worker or the supervisor reads out of it, as a whole
#: (POSIX: writes of at most ``PIPE_BUF`` bytes are atomic). A bigger one (a large duplicate group,
#: large arguments) waits in the supervisor instead, like any task without a taker.
SEND_AHEAD_BYTES = select.PIPE_BUF


@dataclass
class Assignment:
    """A task handed to a worker, with the duplicates that get its output."""

    task: Task
    duplicates: list[Task] = field(default_factory=list)
    #: When it was handed out (the supervisor's clock), for the duration on the closing log line.
    started: float = 0.0

    @property
    def tasks(self) -> list[Task]:
        return [self.task, *self.duplicates]


class WorkerHandle:
    """A worker process and the pipe to it, as the supervisor sees them.

    Built only for a started process: a handle always has a real pid (> 0), so :meth:`kill` can
    never signal pid 0 (this process group, the supervisor included) or -1 (every process we may
    signal). No pid, no handle, no kill.
    """

    def __init__(self, process: ForkedProcess | multiprocessing.process.BaseProcess, conn: Connection, now: float,
                 bounds: Bounds, progress: ProgressPage | None = None,
                 next_pipe: tuple[int, int] | None = None) -> None:
        pid = process.pid
        if not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"a worker handle needs a started process with a pid, not {pid!r}")
        self.process = process
        self.conn = conn
        self.bounds = bounds
        self._pid = pid
        self.state = WorkerState.STARTING
        self.since = now
        self.deadline = bounds.deadline(WorkerState.STARTING, now)
        self.ready_at: float | None = None
        self.assignment: Assignment | None = None
        #: Its next task, sent while it still works on the current one (see :meth:`takes_next`): in
        #: its next-task pipe, not yet its own. The worker reads that pipe only between tasks, and
        #: the supervisor holds a read end of it too, so whoever reads first has the task, whole
        #: (:meth:`take_back`): the supervisor takes it back for a worker that is free sooner, at a
        #: drain, or when the worker leaves; what it cannot take back the worker has read.
        self.next: Assignment | None = None
        #: (read end, write end) of the next-task pipe, both non-blocking; None: no sending ahead.
        self._next_pipe = next_pipe
        #: Its progress page: how far it is with the task it holds (read by messages.Mailbox).
        self.progress = progress
        #: Tasks handed to it so far: the number of the one it holds, as its progress page names it.
        self.tasks_given = 0
        #: When its progress page must be read at the latest: the earliest its task timeout could
        #: pass, while it is ASSIGNED (the boefje may have started meanwhile without a word).
        self.look_at: float | None = None
        #: Why it leaves (retiring) or why the supervisor killed it, for the reaper's line.
        self.why: str | None = None
        # Built once: ``Connection.poll()`` builds a selector per call, and the loop asks after
        # every message (it was the costliest call of a step).
        self._pipe = select.poll()
        self._pipe.register(conn.fileno(), select.POLLIN)

    def __repr__(self) -> str:
        return f"<worker pid={self._pid} {self.state.value}>"

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def ready(self) -> bool:
        """It said "ready" once (it may have moved on since)."""
        return self.ready_at is not None

    @property
    def exitcode(self) -> int | None:
        """The exit code once the process ended (this reaps it); None while it runs."""
        return self.process.exitcode

    # -- the state, its moves and the questions asked of it (see lifecycle.py) ---------------------

    def move(self, state: WorkerState, now: float, *, calls: int = 1) -> None:
        """Enter ``state`` (checked against the transition table) with its deadline."""
        check(self.state, state)
        self.state, self.since = state, now
        self.deadline = self.bounds.deadline(state, now, calls=calls)
        self.look_at = None
        if state is WorkerState.ASSIGNED and self.progress is not None:  # (no page: nothing to look at)
            self.looked(now)

    def assign(self, assignment: Assignment, now: float) -> None:
        """It was sent ``assignment``: it holds that task now (ASSIGNED), numbered as it counts it."""
        self.assignment = assignment
        self.tasks_given += 1
        self.move(WorkerState.ASSIGNED, now)

    def takes_next(self) -> bool:
        """May be sent its next task now: it works on a task (not at the drain's deadline) and has no
        next one yet. Why: the worker then finds the task waiting the moment it is done, instead of
        waiting for the supervisor to wake, read its report and answer (a worker of a trivial boefje
        waited about 1.3 ms of its 7 ms per task for that). The supervisor sends one only to a
        worker that should be free within four pop round trips (``Poller.next_takers``), and takes a
        sent task back as soon as another worker is idle (supervisor.py, ``_dispatch``), so no task
        waits behind a boefje that runs longer than it usually does while a worker is free."""
        return (self._next_pipe is not None and self.next is None
                and self.state in (WorkerState.ASSIGNED, WorkerState.BUSY, WorkerState.DELIVERING))

    def send_next(self, payload: bytes, assignment: Assignment) -> bool:
        """Put ``payload`` (a pickled task message, at most :data:`SEND_AHEAD_BYTES`) in its
        next-task pipe, in one write; False when it does not fit (it stays with the supervisor)."""
        if self._next_pipe is None or len(payload) > SEND_AHEAD_BYTES:
            return False
        try:
            written = os.write(self._next_pipe[1], payload)
        except OSError:  # (a full pipe would mean a task left in it: never, one at a time)
            return False
        if written != len(payload):  # pragma: no cover - a pipe write of at most PIPE_BUF is whole
            raise RuntimeError("a next-task message was written in part")
        self.next = assignment
        return True

    def take_back(self) -> Assignment | None:
        """Read the next task back out of its pipe: the assignment when the worker had not read it
        (it never will), None when the worker has (it runs it, or ran it) or there is none."""
        if self.next is None or self._next_pipe is None:
            return None
        try:
            data = os.read(self._next_pipe[0], SEND_AHEAD_BYTES)
        except BlockingIOError:
            return None
        if not data:  # pragma: no cover - we hold the write end: never the pipe's end
            return None
        assignment, self.next = self.next, None
        return assignment

    def close_next_pipe(self) -> None:
        if self._next_pipe is not None:
            for fd in self._next_pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._next_pipe = None

    def take_next(self, now: float) -> bool:
        """It reported its task done and stays: the next task it was sent is its task now (ASSIGNED).
        False when it had none."""
        assignment, self.next = self.next, None
        if assignment is None:
            return False
        assignment.started = now
        self.assign(assignment, now)
        return True

    def looked(self, now: float) -> None:
        """Its page was read at ``now`` and the boefje had not started: it cannot time out before
        ``now`` + the task timeout, so that is when to read the page again."""
        if self.bounds.task_timeout:
            self.look_at = now + self.bounds.task_timeout

    @property
    def next_due(self) -> float | None:
        """When the supervisor must look at it next: its deadline, or its page (:attr:`look_at`)."""
        if self.look_at is None or (self.deadline is not None and self.deadline < self.look_at):
            return self.deadline
        return self.look_at

    @property
    def takes_task(self) -> bool:
        return self.state in TAKES_TASK

    @property
    def holds_task(self) -> bool:
        return self.state in HOLDS_TASK

    @property
    def free_soon(self) -> bool:
        return self.state in FREE_SOON

    @property
    def stays(self) -> bool:
        return self.state in STAYS

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    # -- talking to it, and ending it ------------------------------------------------------------

    def has_message(self) -> bool:
        """Something to read on the pipe now: a message, or its end (EOF), never blocking."""
        return bool(self._pipe.poll(0))

    def send(self, message: tuple[Any, ...]) -> bool:
        """Send to the worker; False when its end of the pipe is gone (it died)."""
        return self.send_bytes(ForkingPickler.dumps(message))

    def send_bytes(self, payload: bytes | memoryview) -> bool:
        """Send a message pickled already (:meth:`send`); False when the worker's end is gone."""
        try:
            self.conn.send_bytes(payload)
        except (OSError, ValueError):
            return False
        return True

    def exited(self) -> bool:
        """True once the process has ended, without reaping it: its pid (and so its process
        group and session ids) stays reserved until :attr:`exitcode` is read."""
        ended = getattr(self.process, "ended", None)
        if ended is not None:  # forked by the fork server, which keeps it unreaped till then
            return ended()
        try:
            result = os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return self.process.exitcode is not None  # reaped already (by multiprocessing)
        except AttributeError:  # pragma: no cover - no waitid (not Linux)
            return self.process.exitcode is not None
        return result is not None

    def kill(self, now: float, why: str) -> list[int]:
        """SIGKILL the worker's whole process tree and group (see process_tree.kill_tree); returns
        the pids signalled. The worker is then KILLED: its task is no longer its own."""
        self.move(WorkerState.KILLED, now)
        self.why = why
        return process_tree.kill_tree(self._pid)

    def terminate(self, now: float, why: str) -> None:
        """SIGTERM the worker's process group (the boefje's scanners in it may stop cleanly; the
        worker itself only notes that it should leave after its task). TERMINATING: the reaper or
        the time limits SIGKILL the tree after the TERM bound."""
        self.move(WorkerState.TERMINATING, now)
        self.why = why
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGTERM)

    def kill_leftovers(self) -> list[int]:
        """After the worker ended on its own: end what is left of its process group (members that
        did not leave it; the exited worker's pid still names the group until it is reaped)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signal.SIGKILL)
            return [self._pid]
        return []


def start_worker(forks: ForkServer, now: float, bounds: Bounds) -> WorkerHandle:
    """Fork a worker (by the fork server: never from this process, which runs threads; see
    forkserver.py) and return the supervisor's handle on it, with its progress page."""
    progress, progress_fd = ProgressPage.create()
    next_r, next_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)  # both ends ours; the worker gets a read end
    try:
        process, conn = forks.spawn(progress_fd, next_r)
    except BaseException:
        progress.close()
        os.close(next_r)
        os.close(next_w)
        raise
    finally:
        os.close(progress_fd)  # the worker has its own (mapped) copy; ours is the mapping
    return WorkerHandle(process, conn, now, bounds, progress, (next_r, next_w))
