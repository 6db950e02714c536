"""Closing tasks the supervisor is left holding: a worker died, timed out, or could not reach the API.

No task may stay ``dispatched`` or ``running``. The supervisor asks the API where a task stands
before acting, because a PATCH to ``running`` on a task whose output already landed would reopen
it (the scheduler does not guard transitions). Jobs that meet API errors are retried with back-off
instead of blocking the supervisor's loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..client import BoefjeAPIClient
from ..errors import APIConnectionError, APIError, APIStatusError, ParseError
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
    action: str
    reason: str
    due: float = 0.0
    tries: int = 0


FAIL, REQUEUE, PUSH = "fail", "requeue", "push"


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
                self._close(job)
                self._backoff.succeeded()
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

    def _close(self, job: _Job) -> None:
        task = job.task
        if job.action == PUSH:
            self.client.push(task, self.queue)
            logger.info("Pushed task %s back to the queue unchanged", task.id)
            return
        status = self.client.get_task(task.id).status
        if job.action == REQUEUE:
            if status in (TaskStatus.DISPATCHED, TaskStatus.RUNNING):
                self.client.patch_status(task.id, TaskStatus.QUEUED)
                logger.info("Put duplicate task %s back on the queue", task.id)
            return
        if status not in (TaskStatus.DISPATCHED, TaskStatus.RUNNING):
            return  # closed meanwhile (its output landed, or someone else settled it)
        if status is TaskStatus.DISPATCHED:
            self.client.patch_status(task.id, TaskStatus.RUNNING)
        boefje = task.data.boefje
        try:
            self.client.post_output(task.id, failure_output(boefje.id, boefje.version, job.reason))
        except APIStatusError as exc:
            if exc.status_code == 403:
                return  # no longer running: it was closed meanwhile
            if exc.status_code is not None and exc.status_code < 500:
                self.client.patch_status(task.id, TaskStatus.FAILED)  # the API refused our error file
            else:
                raise
        except APIConnectionError:
            raise
        logger.error("Task %s failed: %s", task.id, job.reason)
