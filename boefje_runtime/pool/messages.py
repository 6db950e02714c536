"""What workers tell the supervisor, and what each message changes.

The protocol on a worker's pipe (worker.py sends, this module reads):

- ``("ready", pid)``: imports done; STARTING -> IDLE (or it is told to stop, when draining);
- ``("running", task_id)``: the running PATCH went through, the boefje starts; ASSIGNED -> BUSY;
- ``("ran", task_id)``: the boefje returned, only delivery is left; BUSY -> DELIVERING;
- ``("done", task_id, report, duration, retiring)``: how each task of the assignment left
  (worker.Report); -> IDLE, or RETIRING when it leaves after this task.

A message that does not fit (a task id the worker was not given, a kind we do not know, a move
the lifecycle forbids) means the worker is broken: it is killed and the task it really held is
failed through the same path as any lost worker (issue: a "done" for the wrong task id used to
drop the real assignment with only a log line).
"""

from __future__ import annotations

import logging
from typing import Any

from . import endings
from .backoff import StartupGuard
from .events import PoolEvents, emit
from .exits import TaskExit, Ticket
from .finalizer import Finalizer
from .lifecycle import WorkerState
from .process import WorkerHandle
from .worker import Report

logger = logging.getLogger("boefje_runtime.pool")

S = WorkerState


class Mailbox:
    """Handles worker messages for the supervisor."""

    def __init__(self, finalizer: Finalizer, startup: StartupGuard, listeners: list[PoolEvents]) -> None:
        self.finalizer = finalizer
        self.startup = startup
        self.listeners = listeners  # the pool's own list, not a copy

    def read(self, worker: WorkerHandle, now: float, *, draining: bool) -> bool:
        """Read and handle every message waiting on ``worker``'s pipe; False once the pipe is closed."""
        try:
            while worker.has_message():
                self.handle(worker, worker.conn.recv(), now, draining=draining)
        except (EOFError, OSError):
            return False
        return True

    def handle(self, worker: WorkerHandle, message: Any, now: float, *, draining: bool) -> None:
        if worker.state is S.KILLED:
            return  # its task was settled when it was killed; whatever it says now is moot
        kind = message[0] if isinstance(message, tuple) and message else None
        if kind == "ready":
            self._ready(worker, now, draining)
        elif kind in ("running", "ran") and worker.state is S.TERMINATING:
            pass  # it goes on with its task until it stops or is killed; its deadline stays
        elif kind == "running" and self._about_own_task(worker, message, S.ASSIGNED, now):
            worker.move(S.BUSY, now)
        elif kind == "ran" and self._about_own_task(worker, message, S.BUSY, now):
            assert worker.assignment is not None
            worker.move(S.DELIVERING, now, calls=1 + 2 * len(worker.assignment.duplicates))
        elif kind == "done" and len(message) == 5:
            self._done(worker, message, now, draining)
        elif kind not in ("running", "ran"):
            self._broken(worker, now, f"it sent a message the supervisor does not know ({str(message)[:80]})")

    def _ready(self, worker: WorkerHandle, now: float, draining: bool) -> None:
        worker.ready_at = now
        self.startup.started()
        logger.info("Started listening for tasks from worker pid=%d", worker.pid)
        if worker.state is S.STARTING:
            worker.move(S.IDLE, now)
        if draining and worker.state is S.IDLE:
            stop(worker, now)

    def _about_own_task(self, worker: WorkerHandle, message: tuple, state: WorkerState, now: float) -> bool:
        """The message names the task this worker holds, in the state it should be in; else broken."""
        assignment = worker.assignment
        task_id = message[1] if len(message) > 1 else None
        if assignment is None or assignment.task.id != task_id or worker.state is not state:
            self._broken(worker, now, f"it reported {message[0]!r} for task {task_id} while {worker.state.value}"
                         + (f" with task {assignment.task.id}" if assignment else " without a task"))
            return False
        return True

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
        if retiring:
            worker.why = retiring
            worker.move(S.RETIRING, now)
            logger.info("Worker pid=%d is being replaced: %s", worker.pid, retiring)
        else:
            worker.move(S.IDLE, now)
            if draining:
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
