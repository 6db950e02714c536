"""Popping tasks for the supervisor: how many, whether now, and what to keep of the answer.

This is the one place the pool asks the queue for work, and it has its own pacing: the idle
back-off (an empty queue is asked at most once per poll interval once it stays empty) and the
error back-off (capped, jittered) both set ``next_pop``. Kept out of the supervisor so its loop
reads as "pop for free workers" and the pacing can be read in one place.

Pops run in threads (popthreads.py), so the loop never waits for one: :meth:`Poller.request`
starts them, :meth:`Poller.collect` takes what came back. A pop starts for each idle worker and for
each moment a busy one should be free within four pop round trips (from how long its boefje
usually takes: the end of its task, and the end of the one after), less the tasks held and the pops
in flight: the worker finds its next task waiting, and no more than two tasks wait per such worker.

Two small methods are the poller's policy, so a pop policy (e.g. deduplication's bigger pops) can
replace them: :meth:`Poller.demand` (how many to pop) and :meth:`Poller.take` (what to do with the
answer: groups to run, malformed tasks to close, surplus to push back). The supervisor still decides
when the pool ends (the task limit, burst mode) and hands every task exit to the finalizer. The
poller is handed the workers and the groups the supervisor holds, and never imports it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any

from ..client import BoefjeAPIClient
from ..errors import ParseError
from ..filters import TaskFilter
from ..models import Task
from ..tracing import PopTrace, PopTracer
from .backoff import ErrorBackoff, IdleBackoff
from .events import PoolEvents, emit
from .exits import Ticket
from .pop_policy import PopMode, PopPolicy
from .popthreads import (
    PopThreads,
    TaskDurations,
    expected_free_at,
    free_moments,
    next_soon,
    pop_horizon,
    pops_wanted,
)
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

    def __init__(self, api: BoefjeAPIClient, settings: PoolSettings, task_filter: TaskFilter | None = None,
                 *, threads: int | None = None, tracer_factory: Callable[[], PopTracer] | None = None) -> None:
        self.api = api
        self.settings = settings
        #: The pops in flight: two threads per worker at most, one per moment it will be free
        #: (``free_moments``; ``threads=0``: pops run inline, for step-driven tests with an injected
        #: clock).
        self.pops = PopThreads(api.clone, settings.queue, task_filter or TaskFilter(),
                               max_threads=2 * settings.pool_size + settings.prefetch if threads is None else threads,
                               tracer_factory=tracer_factory)
        #: How long each boefje keeps a worker busy (watched at every :meth:`request`).
        self.durations = TaskDurations()
        #: How much to ask of a pop and what to keep of its answer (whole duplicate groups).
        self.policy = PopPolicy(deduplicate=settings.deduplicate, group_limit=settings.dedup_group_limit)
        #: The last answer was empty (burst mode ends on it once nothing else is going on).
        self.empty = False
        #: The last answer brought work: only then may pops overlap (see :meth:`request`).
        self.flowing = False
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

    @property
    def round_trip(self) -> float:
        """A pop's usual round trip (0 until one came back)."""
        return self.pops.round_trip.value or 0.0

    def free_at(self, workers: Iterable[WorkerHandle], now: float) -> list[float | None]:
        """The moments the workers holding a task will be free for a task popped now (None: unknown;
        :func:`free_moments`, two per worker at most). One that is only delivering its output is free
        since it began that (:meth:`_end`); a next task sent to a worker already takes the moment its
        current one ends; one that retires after its task counts that moment alone (its replacement's,
        :meth:`_retires_after`); with pop-ahead off, none is counted before it is idle."""
        if not self.settings.pop_ahead:
            return []
        times: list[float | None] = []
        for worker in workers:
            if not worker.free_soon and not worker.holds_task:
                continue
            end = self._end(worker, now)
            if self._retires_after(worker):  # its replacement takes a task about when it ends
                times.append(end)
                continue
            if worker.next is not None:
                following = self.durations.expected(worker.next.task.data.boefje.id)
            else:
                following = self._usual(worker)
            times += free_moments(end, following, next_waiting=worker.next is not None)
        return times

    def next_takers(self, workers: Iterable[WorkerHandle], now: float) -> list[WorkerHandle]:
        """The busy workers a held task may be sent to as their next one, the one free first first:
        those whose task should end within the horizon. Why: a task popped for one worker's moment
        must not wait in the pipe of a worker whose boefje runs far longer, or for a time not known
        yet, while the worker it was popped for takes one task after another and is never idle (an
        idle worker would read it back: ``WorkerPool._take_back_for_idle``)."""
        if not self.settings.pop_ahead:
            return []
        horizon = now + pop_horizon(self.round_trip)
        ends = [(self._end(worker, now), worker) for worker in workers if self.takes_next(worker)]
        soon = [(end, worker) for end, worker in ends if end is not None and end <= horizon]
        return [worker for _, worker in sorted(soon, key=lambda item: item[0])]  # (stable: ties in pool order)

    def takes_next(self, worker: WorkerHandle) -> bool:
        """May be sent a next task at all (``WorkerHandle.takes_next``), and will stay for it."""
        return worker.takes_next() and not self._retires_after(worker)

    def _retires_after(self, worker: WorkerHandle) -> bool:
        """The task it holds is its last (``max_tasks_per_child``; a memory limit cannot be foreseen):
        it will not be free again, its replacement will. So it counts one moment, not two, and is
        sent no next task (which would only be read back once it says it leaves)."""
        limit = self.settings.max_tasks_per_child
        return bool(limit) and worker.tasks_given >= limit

    def _usual(self, worker: WorkerHandle) -> float | None:
        """How long the boefje of the worker's task usually keeps a worker busy (None: not known)."""
        assignment = worker.assignment
        return None if assignment is None else self.durations.expected(assignment.task.data.boefje.id)

    def _end(self, worker: WorkerHandle, now: float) -> float | None:
        """When the worker's task should end, a fixed time (None: not known, or no longer believable).
        One only delivering its output: when it began that (its task ends about now)."""
        if worker.free_soon:
            return worker.since
        if not worker.holds_task or worker.assignment is None:
            return None
        return expected_free_at(worker.assignment.started, self._usual(worker), now, self.round_trip)

    def demand(self, workers: Iterable[WorkerHandle], held: Sized, now: float = 0.0,
               free_at: list[float | None] | None = None) -> int:
        """How many tasks to pop now: one per idle worker and per moment a busy worker will be free
        within four pop round trips (pop-ahead, :meth:`free_at`), plus the prefetch, minus what we
        already hold and the pops in flight; never past the task limit. Zero or less: none."""
        workers = list(workers)
        idle = sum(1 for worker in workers if worker.takes_task)
        free_at = self.free_at(workers, now) if free_at is None else free_at
        want = pops_wanted(idle=idle, free_at=free_at, now=now, horizon=pop_horizon(self.round_trip),
                           held=len(held), in_flight=self.pops.slots_in_flight, prefetch=self.settings.prefetch)
        if self.settings.max_tasks is not None:
            want = min(want, self.settings.max_tasks - self.popped - self.pops.limits_in_flight)
        return want

    def worth_popping(self, want: int, workers: Iterable[WorkerHandle], held: Sized) -> bool:
        """With a prefetch, pop in batches of ``prefetch + 1`` (2 + 1/(prefetch+1) requests per task)
        instead of one pop per finished task; but never while a worker sits idle with nothing held."""
        if want <= 0:
            return False
        idle = sum(1 for worker in workers if worker.takes_task)
        left = None if self.settings.max_tasks is None else self.settings.max_tasks - self.popped
        last_batch = left is not None and want >= left - self.pops.limits_in_flight
        return idle > len(held) + self.pops.slots_in_flight or want > self.settings.prefetch or last_batch

    def next_due(self, workers: list[WorkerHandle], held: Sized, now: float = 0.0) -> float | None:
        """When the loop should wake up to pop: now (or when the back-off allows) if it wants a pop,
        else when the next moment a busy worker will be free comes within the horizon; None when it wants
        nothing (waking would spin). An answer wakes the loop by itself (``pops.wakeup_fd``) when a
        worker could take its task; while none can, the next worker's "done" does."""
        if self._one_at_a_time:
            return None  # the answer in flight wakes the loop, or a worker's "done" collects it
        free_at = self.free_at(workers, now)
        if self.worth_popping(self.demand(workers, held, now, free_at), workers, held):
            return self.next_pop
        soon = next_soon(free_at, now, pop_horizon(self.round_trip))
        return None if soon is None else max(soon, self.next_pop)

    @property
    def _one_at_a_time(self) -> bool:
        """While the queue looks empty (or the API fails), one pop at a time for every free worker:
        an idle pool asks once per interval, and a group enqueued now arrives in one answer."""
        return not self.flowing and self.pops.in_flight > 0

    def request(self, now: float, workers: list[WorkerHandle], held: Sized) -> None:
        """Start pops for the workers that want a task now (see :meth:`demand`). Asking for whole
        groups (the policy's GROUPS mode: a pop brings one group or one task), each worker gets a
        pop of its own, so pops overlap; otherwise (with a prefetch, which pops in batches, and
        while the queue looks empty or the API fails) one pop asks for all of them."""
        self.durations.watch(((worker.pid, worker.assignment.task.data.boefje.id, worker.assignment.started)
                              for worker in workers if worker.holds_task and worker.assignment is not None), now)
        if now < self.next_pop or self._one_at_a_time:
            # While the queue looks empty, one pop at a time for every free worker: an idle pool
            # asks once per interval, and a group enqueued now arrives in one answer.
            return
        want = self.demand(workers, held, now)
        if not self.worth_popping(want, workers, held):
            return
        left = None if self.settings.max_tasks is None else self.settings.max_tasks - self.popped
        if self.policy.mode is PopMode.GROUPS and not self.settings.prefetch and self.flowing:
            for _ in range(want):
                limit = self.policy.limit(1) if left is None else min(self.policy.limit(1), left)
                if limit <= 0:
                    return
                self.pops.request(limit, slots=1)
                if left is not None:
                    left -= limit
        else:
            limit = self.policy.limit(want) if left is None else min(self.policy.limit(want), left)
            self.pops.request(limit, slots=want)

    def collect(self, now: float, listeners: Iterable[PoolEvents]) -> list[tuple[list[Any], int, PopTrace | None]]:
        """The raw tasks of every pop that came back since the last call, with the number of
        workers it was for and its trace (tracing on). An API error moves ``next_pop`` by the
        error back-off, an empty answer by the idle back-off."""
        answers = []
        for answer in self.pops.answers():
            if answer.raw_tasks is None:
                wait = self.errors.failed()
                self.next_pop = max(self.next_pop, now + wait)
                logger.warning("Could not pop tasks: %s; next try in %.1f s", answer.error, wait)
                emit(listeners, "api_error", "pop")
                emit(listeners, "api_reachable", False, now)
                continue
            self.errors.succeeded()
            emit(listeners, "api_reachable", True, now)
            self.empty = not answer.raw_tasks
            self.flowing = not self.empty
            if self.empty:
                self.next_pop = max(self.next_pop, now + self.idle.next_wait(now))
                continue
            self.idle.got_work(now)
            self.popped += len(answer.raw_tasks)
            answers.append((answer.raw_tasks, answer.slots, answer.trace))
        return answers

    def close(self) -> None:
        self.pops.close()

    def take(self, raw_tasks: list[Any], room: int) -> Answer:
        """Parse popped tasks and group their duplicates (the first of a group runs); keep the
        groups ``room`` workers can start, the rest is surplus to push back (pop_policy.py). A
        malformed task with a usable id is handed back to be closed: nobody else will run it."""
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
        settled = self.policy.settle(tasks, room)
        answer.groups, answer.surplus = settled.keep, settled.surplus
        self.popped -= len(settled.surplus)
        return answer
