"""Popping tasks for the supervisor: how many, whether now, and what to keep of the answer.

This is the one place the pool asks the queue for work, and it has its own pacing: the idle
back-off (an empty queue is asked at most once per poll interval once it stays empty) and the
error back-off (capped, jittered) both set ``next_pop``. Kept out of the supervisor so its loop
reads as "pop for free workers" and the pacing can be read in one place.

Two small methods are the poller's policy, so a pop policy (e.g. deduplication's bigger pops) can
replace them: :meth:`Poller.demand` (how many to pop) and :meth:`Poller.take` (what to do with the
answer: groups to run, malformed tasks to close, surplus to push back). The supervisor still decides
when the pool ends (the task limit, burst mode) and hands every task exit to the finalizer. The
poller is handed the workers and the groups the supervisor holds, and never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

from ..client import BoefjeAPIClient
from ..errors import APIError, ParseError
from ..filters import TaskFilter
from ..models import Task
from .backoff import ErrorBackoff, IdleBackoff
from .dedup import group_duplicates
from .events import PoolEvents, emit
from .exits import Ticket
from .process import WorkerHandle
from .settings import PoolSettings

logger = logging.getLogger("boefje_runtime.pool")


@dataclass
class Answer:
    """What to do with one pop's answer."""

    #: Groups to run, in pop order (the first task of a group runs; the others are its duplicates).
    groups: list[list[Task]] = field(default_factory=list)
    #: Popped tasks that do not parse but have an id, with the reason: closed as MALFORMED.
    malformed: list[tuple[Ticket, str]] = field(default_factory=list)
    #: Popped tasks the pool should not hold: pushed back at once (PUSHED_BACK).
    surplus: list[Task] = field(default_factory=list)


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

    @property
    def exhausted(self) -> bool:
        """The task limit (``max_tasks``) is reached: nothing more will be popped."""
        return self.settings.max_tasks is not None and self.popped >= self.settings.max_tasks

    def demand(self, workers: Iterable[WorkerHandle], held: Sized) -> int:
        """How many tasks to pop now: one per idle worker (and per worker that is only delivering
        its output, with pop-ahead), plus the prefetch, minus what we already hold; never past the
        task limit. Zero or less: none."""
        free = 0
        for worker in workers:
            if worker.takes_task or (self.settings.pop_ahead and worker.free_soon):
                free += 1
        want = free + self.settings.prefetch - len(held)
        if self.settings.max_tasks is not None:
            want = min(want, self.settings.max_tasks - self.popped)
        return want

    def worth_popping(self, want: int, workers: Iterable[WorkerHandle], held: Sized) -> bool:
        """With a prefetch, pop in batches of ``prefetch + 1`` (2 + 1/(prefetch+1) requests per task)
        instead of one pop per finished task; but never while a worker sits idle with nothing held."""
        if want <= 0:
            return False
        idle = sum(1 for worker in workers if worker.takes_task)
        last_batch = self.settings.max_tasks is not None and want >= self.settings.max_tasks - self.popped
        return idle > len(held) or want > self.settings.prefetch or last_batch

    def next_due(self, workers: list[WorkerHandle], held: Sized) -> float | None:
        """When the loop should wake up to pop, or None when it wants nothing (waking would spin)."""
        if self.worth_popping(self.demand(workers, held), workers, held):
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
            emit(listeners, "api_error", "pop")
            emit(listeners, "api_reachable", False, now)
            return None
        self.errors.succeeded()
        emit(listeners, "api_reachable", True, now)
        if not raw_tasks:
            self.next_pop = now + self.idle.next_wait(now)
            return raw_tasks
        self.idle.got_work(now)
        self.next_pop = now
        self.popped += len(raw_tasks)
        return raw_tasks

    def take(self, raw_tasks: list[Any]) -> Answer:
        """Parse popped tasks and group their duplicates (the first of a group runs). A malformed
        task with a usable id is handed back to be closed: nobody else will run it."""
        answer = Answer()
        tasks = []
        for index, item in enumerate(raw_tasks):
            try:
                tasks.append(Task.from_dict(item, f"pop[{index}]"))
            except ParseError as exc:
                logger.error("Malformed task in the pop answer: %s", exc)
                ticket = Ticket.of_malformed(item)
                if ticket is not None:
                    answer.malformed.append((ticket, str(exc)))
        answer.groups = group_duplicates(tasks, self.settings.deduplicate)
        return answer
