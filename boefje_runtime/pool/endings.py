"""Ending a worker and what it held: the one place a worker is killed or found gone with a task.

Whoever decides a worker must go (a time limit, the drain, a broken protocol, the pool's exit)
calls :func:`kill`; the reaper calls :func:`lost` for a worker that ended on its own. Both hand
the task to the finalizer with the exit that says why, so a task's end never depends on which
part of the supervisor noticed.
"""

from __future__ import annotations

import logging

from ..logs import log_context
from .exits import TaskExit, Ticket
from .finalizer import Finalizer
from .process import Assignment, WorkerHandle

logger = logging.getLogger("boefje_runtime.pool")


def kill(worker: WorkerHandle, now: float, why: str, finalizer: Finalizer, how: TaskExit = TaskExit.SHUT_DOWN,
         *, reason: str | None = None) -> None:
    """SIGKILL ``worker``'s whole process tree; its task (if any) leaves the pool ``how``."""
    assignment, worker.assignment = worker.assignment, None
    pids = worker.kill(now, why)
    with log_context(**(Ticket.of(assignment.task).log_fields() if assignment else {})):
        logger.warning("Killed worker pid=%d and %d processes it started: %s", worker.pid, max(len(pids) - 1, 0),
                       why)
    if assignment is not None:
        settle_assignment(finalizer, assignment, how, now, reason=reason or why)


def lost(worker: WorkerHandle, now: float, how_it_ended: str, finalizer: Finalizer) -> None:
    """``worker`` ended on its own while holding a task: the task is failed saying how."""
    assignment, worker.assignment = worker.assignment, None
    if assignment is None:
        return
    reason = TaskExit.WORKER_LOST.reason(how=f"(pid {worker.pid}) {how_it_ended}")
    with log_context(**Ticket.of(assignment.task).log_fields()):
        logger.error("Worker pid=%d %s while running the task", worker.pid, how_it_ended)
    settle_assignment(finalizer, assignment, TaskExit.WORKER_LOST, now, reason=reason)


def next_lost(worker: WorkerHandle, now: float, finalizer: Finalizer) -> None:
    """``worker`` left after it read the next task it was sent (the supervisor could not read it
    back), so it may have started it (its ``running`` PATCH may have landed): that task is failed
    saying so, never handed out again."""
    assignment, worker.next = worker.next, None
    if assignment is None:
        return
    why = worker.why or "on its own"
    how = f"(pid {worker.pid}) ended ({why}) just after it took this task as its next, so possibly"
    with log_context(**Ticket.of(assignment.task).log_fields()):
        logger.error("Worker pid=%d ended just as it took the task", worker.pid)
    settle_assignment(finalizer, assignment, TaskExit.WORKER_LOST, now, reason=TaskExit.WORKER_LOST.reason(how=how))


def settle_assignment(finalizer: Finalizer, assignment: Assignment, how: TaskExit, now: float, *,
                      reason: str) -> None:
    """The main task leaves ``how``; its duplicates, which got no output, go back to the queue."""
    finalizer.settle(Ticket.of(assignment.task), how, now, reason=reason, duration=now - assignment.started)
    for duplicate in assignment.duplicates:
        finalizer.settle(Ticket.of(duplicate), TaskExit.DUPLICATE_REQUEUED, now)
