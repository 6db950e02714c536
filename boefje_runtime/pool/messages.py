"""What workers tell the supervisor, and what each message changes.

The protocol on a worker's pipe (worker.py sends, this module reads):

- ``("ready", pid)``: imports done; STARTING -> IDLE (or it is told to stop, when draining);
- ``("done", task_id, report, duration, retiring)``: how each task of the assignment left
  (worker.Report); -> IDLE, or RETIRING when it leaves after this task. A worker that stays and
  was sent its next task (``WorkerHandle.next``) reads it from its next-task pipe right after this
  message: if the supervisor cannot read it back any more, it is the worker's task from here on
  (-> ASSIGNED); if it can, the worker never saw it, and it is handed out again.

Between the two, a worker only marks its progress on its page (progress.py), which
:meth:`Mailbox.read_progress` reads at every step: the boefje started, ASSIGNED -> BUSY; it
returned, only delivery is left, BUSY -> DELIVERING; each move dated by the worker's own mark.

A message that does not fit (a task id the worker was not given, a kind we do not know, a move
the lifecycle forbids) means the worker is broken: it is killed and the task it really held is
failed through the same path as any lost worker (issue: a "done" for the wrong task id used to
drop the real assignment with only a log line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import endings
from .backoff import StartupGuard
from .events import PoolEvents, emit
from .exits import TaskExit, Ticket
from .finalizer import Finalizer
from .lifecycle import WorkerState
from .process import WorkerHandle
from .progress import Progress
from .worker import Report

logger = logging.getLogger("boefje_runtime.pool")

S = WorkerState


class Mailbox:
    """Handles worker messages for the supervisor."""

    def __init__(self, finalizer: Finalizer, startup: StartupGuard, listeners: list[PoolEvents], *,
                 return_next: Callable[[WorkerHandle, float], bool]) -> None:
        self.finalizer = finalizer
        self.startup = startup
        self.listeners = listeners  # the pool's own list, not a copy
        #: The supervisor's: reads a worker's next task back out of its pipe and hands it out again.
        self.return_next = return_next

    def read(self, worker: WorkerHandle, now: float, *, draining: bool) -> bool:
        """Read and handle every message waiting on ``worker``'s pipe; False once the pipe is closed."""
        try:
            while worker.has_message():
                self.handle(worker, worker.conn.recv(), now, draining=draining)
        except (EOFError, OSError):
            return False
        return True

    def handle(self, worker: WorkerHandle, message: Any, now: float, *, draining: bool) -> None:
        kind = message[0] if isinstance(message, tuple) and message else None
        if worker.state is S.KILLED:
            # its task was settled when it was killed; what it says now is moot (a next task it
            # was sent is settled when it is reaped: supervisor.py, _settle_next)
            return
        if kind == "ready":
            self._ready(worker, now, draining)
        elif kind == "done" and len(message) == 5:
            self._done(worker, message, now, draining)
        else:
            self._broken(worker, now, f"it sent a message the supervisor does not know ({str(message)[:80]})")

    def read_progress(self, worker: WorkerHandle, now: float) -> None:
        """Move a worker that holds a task as far as its progress page says: ASSIGNED -> BUSY once the
        boefje started, -> DELIVERING once it returned. Each move is dated by the worker's mark (on
        this clock: ``now`` less how long ago it was made), so the task timeout counts from the
        boefje's real start, however late the supervisor looks. A TERMINATING worker keeps its
        deadline; a mark of an earlier task (the number is not the one it holds) changes nothing."""
        state = worker.state
        if (state is not S.ASSIGNED and state is not S.BUSY) or worker.progress is None:
            return
        mark = worker.progress.read()
        if mark is None or mark[0] != worker.tasks_given or mark[1] is Progress.NONE:
            if state is S.ASSIGNED:  # (a mark being written now dates itself; the next read sees it)
                worker.looked(now)
            return
        _, reached, at = mark
        when = min(now, max(worker.since, now - (time.monotonic() - at)))
        if state is S.ASSIGNED:
            worker.move(S.BUSY, when)
        if reached is Progress.RAN and worker.assignment is not None:
            worker.move(S.DELIVERING, when, calls=1 + 2 * len(worker.assignment.duplicates))

    def _ready(self, worker: WorkerHandle, now: float, draining: bool) -> None:
        worker.ready_at = now
        self.startup.started()
        logger.info("Started listening for tasks from worker pid=%d", worker.pid)
        if worker.state is S.STARTING:
            worker.move(S.IDLE, now)
        if draining and worker.state is S.IDLE:
            stop(worker, now)

    def _done(self, worker: WorkerHandle, message: tuple, now: float, draining: bool) -> None:
        _, task_id, report, duration, retiring = message
        if not worker.holds_task or not isinstance(report, Report) or (
            worker.assignment is None or worker.assignment.task.id != task_id
        ):
            held = worker.assignment.task.id if worker.assignment else "none"
            self._broken(worker, now, f"it reported task {task_id} done while holding {held}")
            return
        assignment, worker.assignment = worker.assignment, None
        self._settle(assignment, report, duration, now)
        self.return_next(worker, now)  # a leaving worker never reads it; a staying one may not have yet
        if retiring:
            worker.why = retiring
            worker.move(S.RETIRING, now)
            logger.info("Worker pid=%d is being replaced: %s", worker.pid, retiring)
        else:
            worker.move(S.IDLE, now)
            if worker.take_next(now):
                emit(self.listeners, "task_started", worker.assignment.task.data.boefje.id)
            elif draining:
                stop(worker, now)

    def _settle(self, assignment, report: Report, duration: float, now: float) -> None:
        """Each task of the assignment leaves as the worker reported."""
        how = report.exit
        details = {"error": report.error or "unknown error"}
        self.finalizer.settle(Ticket.of(assignment.task), how, now, reason=how.reason(**details), duration=duration,
                              status_code=report.status_code, recheck=report.recheck,
                              logged=how in (TaskExit.COMPLETED, TaskExit.FAILED))  # the worker said so
        for duplicate in assignment.duplicates:
            exit_, acted, recheck = report.duplicates.get(duplicate.id, (TaskExit.DUPLICATE_REQUEUED, False, False))
            self.finalizer.settle(Ticket.of(duplicate), exit_, now, duration=duration, recheck=recheck, acted=acted,
                                  logged=acted and exit_ is not TaskExit.GONE)

    def _broken(self, worker: WorkerHandle, now: float, what: str) -> None:
        """A worker that breaks the protocol is replaced; the task it held fails as a lost worker's."""
        why = f"the worker (pid {worker.pid}) broke the supervisor's protocol: {what}"
        logger.error("%s; killing it", why)
        endings.kill(worker, now, why, self.finalizer, TaskExit.WORKER_LOST)
        emit(self.listeners, "worker_exited", "broken")


def stop(worker: WorkerHandle, now: float) -> None:
    """Tell a worker without a task to leave (the drain). A worker whose pipe is gone is dying: its
    reaping will tell."""
    if worker.send(("stop",)):
        worker.move(S.STOPPING, now)
