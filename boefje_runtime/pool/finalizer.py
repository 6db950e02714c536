"""Closing tasks the supervisor is left holding: a worker died, timed out, or could not reach the API.

No task may stay ``dispatched`` or ``running``. The supervisor asks the API where a task stands
before acting, because a PATCH to ``running`` on a task whose output already landed would reopen
it (the scheduler does not guard transitions). Jobs that meet API errors are retried with back-off
instead of blocking the supervisor's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..client import BoefjeAPIClient
from ..errors import APIError, APIStatusError, ParseError
from ..execution import failure_output
from ..models import Task, TaskStatus
from .backoff import ErrorBackoff

logger = logging.getLogger("boefje_runtime.pool")

#: Give up on a task after this many failed tries (the API is gone for good; say so loudly).
MAX_TRIES = 50


@dataclass
class _Job:
    task: Task
    #: FAIL: post a FAILED output saying ``reason``. REQUEUE: a duplicate that never ran goes back.
    #: PUSH: popped but never started. RECHECK: make sure a late PATCH did not reopen a closed task.
    action: str
    reason: str
    due: float = 0.0
    tries: int = 0
    #: RECHECK: the status the task was closed with, and when to look again after this look.
    closed: TaskStatus | None = None
    later: list[float] = field(default_factory=list)


FAIL, REQUEUE, PUSH, RECHECK = "fail", "requeue", "push", "recheck"

#: When to look again at a task whose running PATCH may land late, in request timeouts after closing.
#: A request the client gave up on is rarely handled much later than that; twice costs two GETs.
RECHECK_AFTER = (3, 10)


def _recheck_job(task: Task, closed: TaskStatus, now: float, timeout: float) -> _Job:
    first, *rest = (now + factor * timeout for factor in RECHECK_AFTER)
    return _Job(task, RECHECK, "a late running PATCH", due=first, closed=closed, later=rest)


class Finalizer:
    """A queue of tasks to close, worked through by the supervisor's loop."""

    def __init__(self, client: BoefjeAPIClient, queue: str = "boefje") -> None:
        self.client = client
        self.queue = queue
        self.jobs: list[_Job] = []
        self.abandoned: list[str] = []
        self._backoff = ErrorBackoff(first=0.5, ceiling=30.0)

    def fail(self, task: Task, reason: str, now: float) -> None:
        self.jobs.append(_Job(task, FAIL, reason, due=now))

    def requeue(self, task: Task, now: float) -> None:
        self.jobs.append(_Job(task, REQUEUE, "duplicate whose leader did not finish", due=now))

    def push_back(self, task: Task, now: float) -> None:
        self.jobs.append(_Job(task, PUSH, "popped but not started", due=now))

    def recheck(self, task: Task, closed: TaskStatus, now: float, timeout: float) -> None:
        """The scheduler does not guard transitions: a running PATCH that lands after the output
        reopens the task. Look again later and close it again if that happened."""
        self.jobs.append(_recheck_job(task, closed, now, timeout))

    @property
    def blocking(self) -> list[_Job]:
        """Jobs that must finish before the pool may stop (rechecks are best effort)."""
        return [job for job in self.jobs if job.action != RECHECK]

    def __len__(self) -> int:
        return len(self.jobs)

    def next_due(self) -> float | None:
        return min((job.due for job in self.jobs), default=None)

    def run(self, now: float) -> None:
        """Try every job that is due; keep the ones that met an API error."""
        remaining = []
        for job in self.jobs:
            if job.due > now:
                remaining.append(job)
                continue
            try:
                closed_by_us = self._close(job)
                self._backoff.succeeded()
                if closed_by_us:
                    # The dead worker's running PATCH may still be in flight and reopen the task.
                    remaining.append(_recheck_job(job.task, TaskStatus.FAILED, now, self.client.timeout))
                if job.action == RECHECK and job.later:
                    job.due, job.later = job.later[0], job.later[1:]
                    remaining.append(job)
            except (APIError, ParseError) as exc:
                job.tries += 1
                if job.tries >= MAX_TRIES:
                    logger.error("Giving up on task %s after %d tries: %s", job.task.id, job.tries, exc)
                    self.abandoned.append(job.task.id)
                    continue
                job.due = now + self._backoff.failed()
                logger.warning("Could not close task %s yet (%s); trying again later", job.task.id, exc)
                remaining.append(job)
        self.jobs = remaining

    def _close(self, job: _Job) -> bool:
        """Do the job; True when it was a FAIL that this call closed (the others return False)."""
        task = job.task
        if job.action == PUSH:
            self.client.push(task, self.queue)
            logger.info("Pushed task %s back to the queue unchanged", task.id)
            return False
        status = self.client.get_task(task.id).status
        if job.action == RECHECK:
            if status is TaskStatus.RUNNING and job.closed is not None:
                self.client.patch_status(task.id, job.closed)
                logger.warning("Task %s was reopened by a late running PATCH; set it back to %s",
                               task.id, job.closed.value)
            return False
        if job.action == REQUEUE:
            if status in (TaskStatus.DISPATCHED, TaskStatus.RUNNING):
                self.client.patch_status(task.id, TaskStatus.QUEUED)
                logger.info("Put duplicate task %s back on the queue", task.id)
            return False
        if status not in (TaskStatus.DISPATCHED, TaskStatus.RUNNING):
            return False  # closed meanwhile (its output landed, or someone else settled it)
        if status is TaskStatus.DISPATCHED:
            self.client.patch_status(task.id, TaskStatus.RUNNING)
        boefje = task.data.boefje
        try:
            self.client.post_output(task.id, failure_output(boefje.id, boefje.version, job.reason))
        except APIStatusError as exc:
            if exc.status_code == 403:
                return False  # no longer running: it was closed meanwhile
            if exc.status_code is not None and exc.status_code < 500:
                self.client.patch_status(task.id, TaskStatus.FAILED)  # the API refused our error file
            else:
                raise
        logger.error("Task %s failed: %s", task.id, job.reason)
        return True
