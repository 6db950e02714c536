"""Popping tasks for the supervisor: how many, whether now, and what to keep of the answer.

This is the one place the pool asks the queue for work, and it has its own pacing: the idle
back-off (an empty queue is asked at most once per poll interval once it stays empty) and the
error back-off (capped, jittered) both set ``next_pop``. Kept out of the supervisor so its loop
reads as "pop for free workers" and the pacing can be read in one place.

The supervisor still decides when the pool ends (the task limit, burst mode): the poller only
pops. It is handed the workers and the groups the supervisor holds, and never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sized
from typing import Any

from ..client import BoefjeAPIClient
from ..errors import APIError, ParseError
from ..filters import TaskFilter
from ..models import Task, TaskStatus
from .backoff import ErrorBackoff, IdleBackoff
from .dedup import group_duplicates
from .events import PoolEvents
from .process import WorkerHandle
from .settings import PoolSettings

logger = logging.getLogger("boefje_runtime.pool")


class Poller:
    """Pops only for free workers (plus any prefetch), so tasks never wait on a busy container."""

    def __init__(self, api: BoefjeAPIClient, settings: PoolSettings) -> None:
        self.api = api
        self.settings = settings
        self.idle = IdleBackoff(settings.first_poll_wait, settings.poll_interval, settings.hot_window)
        self.errors = ErrorBackoff(first=0.5, ceiling=settings.max_error_backoff)
        #: No pop before this time (the supervisor's clock); the back-offs move it.
        self.next_pop = 0.0
        #: Tasks popped so far, malformed ones included (what the task limit counts).
        self.popped = 0

    def wanted(self, workers: Iterable[WorkerHandle], held: Sized) -> int:
        """How many tasks to pop now: one per idle worker (and per worker that is only delivering
        its output, with pop-ahead), plus the prefetch, minus what we already hold."""
        free = 0
        for worker in workers:
            if worker.idle or (self.settings.pop_ahead and worker.finishing and worker.retiring is None):
                free += 1
        return free + self.settings.prefetch - len(held)

    def worth_popping(self, want: int, workers: Iterable[WorkerHandle], held: Sized) -> bool:
        """With a prefetch, pop in batches of ``prefetch + 1`` (2 + 1/(prefetch+1) requests per task)
        instead of one pop per finished task; but never while a worker sits idle with nothing held."""
        idle = sum(1 for worker in workers if worker.idle)
        return idle > len(held) or want > self.settings.prefetch

    def next_due(self, workers: list[WorkerHandle], held: Sized) -> float | None:
        """When the loop should wake up to pop, or None when it wants nothing (waking would spin)."""
        want = self.wanted(workers, held)
        if want > 0 and self.worth_popping(want, workers, held):
            return self.next_pop
        return None

    def pop(
        self, now: float, want: int, task_filter: TaskFilter, listeners: Iterable[PoolEvents]
    ) -> list[Any] | None:
        """Pop up to ``want`` raw tasks; None after an API error (the error back-off then paces
        the next try). An empty answer moves ``next_pop`` by the idle back-off; work makes it now."""
        try:
            raw_tasks = self.api.pop_raw(self.settings.queue, task_filter, want)
        except (APIError, ParseError) as exc:
            wait = self.errors.failed()
            self.next_pop = now + wait
            logger.warning("Could not pop tasks: %s; next try in %.1f s", exc, wait)
            for listener in listeners:
                listener.api_error("pop")
                listener.api_reachable(False, now)
            return None
        self.errors.succeeded()
        for listener in listeners:
            listener.api_reachable(True, now)
        if not raw_tasks:
            self.next_pop = now + self.idle.next_wait(now)
            return raw_tasks
        self.idle.got_work(now)
        self.next_pop = now
        self.popped += len(raw_tasks)
        return raw_tasks

    def accept(self, raw_tasks: list[Any]) -> list[list[Task]]:
        """Parse popped tasks and group their duplicates (the first of a group runs). A malformed
        task is reported and, when it has a usable id, marked failed: nobody else will run it."""
        tasks = []
        for index, item in enumerate(raw_tasks):
            try:
                tasks.append(Task.from_dict(item, f"pop[{index}]"))
            except ParseError as exc:
                task_id = item.get("id") if isinstance(item, dict) else None
                logger.error("Malformed task in the pop answer: %s", exc)
                if isinstance(task_id, str) and task_id:
                    try:
                        self.api.patch_status(task_id, TaskStatus.FAILED)
                        logger.error("Marked malformed task %s failed", task_id)
                    except APIError as patch_error:
                        logger.error("Could not mark malformed task %s failed: %s", task_id, patch_error)
        return group_duplicates(tasks, self.settings.deduplicate)
