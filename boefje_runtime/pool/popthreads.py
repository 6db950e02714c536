"""Pops in flight: the supervisor's pops run in threads, so its loop never waits for one.

Why: a pop through OpenKAT's Boefje API hydrates the task from the KATalogus and the scheduler's
database, tens of milliseconds, while many boefjes finish in tens of milliseconds too. A loop that
pops in turn leaves its workers idle for every pop; with the pop started before a worker is free
(see :func:`pops_wanted`), the worker finds its next task waiting. Several pops may be in flight at
once (two per worker at most, plus the prefetch), so a slow scheduler does not serialise a large pool.

What stays with the loop: which tasks it holds, who gets which (the supervisor knows who holds
which task), and how many pops to start. A thread only pops and hands the raw answer back through
a queue, then wakes the loop through a pipe (``wakeup_fd``, registered in its selector). Threads
never log and never touch the pool's state. With ``max_threads=0`` a pop runs inline, in the
loop's own thread (step-driven tests with an injected clock stay deterministic).

Workers are not forked from this process while these threads run: see ``forkserver.py``.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..client import BoefjeAPIClient
from ..filters import TaskFilter
from ..tracing import PopTrace, PopTracer

#: Weight of the newest sample in the running averages (pop round trip, task durations).
SMOOTHING = 0.2


@dataclass(frozen=True)
class PopAnswer:
    """What one pop brought back: the raw tasks, or the error that ended it."""

    limit: int
    slots: int
    raw_tasks: list[Any] | None
    error: Exception | None
    seconds: float
    #: With tracing on: the pop's ids and times (its request carried that traceparent).
    trace: PopTrace | None = None


class RunningAverage:
    """An exponentially weighted average; None until the first sample."""

    def __init__(self, smoothing: float = SMOOTHING) -> None:
        self.smoothing = smoothing
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.smoothing * (sample - self.value)


class TaskDurations:
    """How long a worker is busy with a task of each boefje (from dispatch until the worker is
    done with it), so the supervisor can tell when busy workers will be free (:func:`free_moments`).
    :meth:`watch` learns it by looking at who holds which task at each step."""

    def __init__(self) -> None:
        self._by_boefje: dict[str, RunningAverage] = {}
        #: worker pid -> (boefje id, when its task was handed out), as last seen
        self._held: dict[int, tuple[str, float]] = {}

    def watch(self, holding: Iterable[tuple[int, str, float]], now: float) -> None:
        """``holding``: (pid, boefje id, handed out at) of every worker holding a task now. A task
        seen last time and gone now took until ``now``."""
        current = {pid: (boefje_id, started) for pid, boefje_id, started in holding}
        for pid, seen in self._held.items():
            if current.get(pid) != seen:
                self.add(seen[0], now - seen[1])
        self._held = current

    def add(self, boefje_id: str, seconds: float) -> None:
        self._by_boefje.setdefault(boefje_id, RunningAverage()).add(seconds)

    def expected(self, boefje_id: str) -> float | None:
        average = self._by_boefje.get(boefje_id)
        return None if average is None else average.value


def expected_free_at(started: float, expected: float | None, now: float, round_trip: float) -> float | None:
    """When a busy worker should be free: ``started + expected``; None when that is unknown (the
    boefje never ran here) or no longer believable (it runs far past its usual time): such a worker
    gets no task ahead of time, so a long task never keeps a popped task waiting."""
    if expected is None:
        return None
    free_at = started + expected
    if now > free_at + expected + round_trip:
        return None
    return free_at


#: How far ahead a pop starts: once the moment it is for (see :func:`free_moments`) is within this
#: many pop round trips. One is what the pop needs to come back; the rest covers the spread of both
#: guesses (under load a round trip and a boefje's time each vary by about as much as they last) and
#: the hand-overs the round trip leaves out (the pop thread's wake-up, the loop's). Two were
#: measured once (0.62x -> 0.74x two bare loops, against one); with the moment after a worker's
#: next task counted too, two rarely brought that moment within the horizon (no better than one
#: moment, paired), four did (``benchmarks/compare.py``, pool 2, trivial boefje, two runs of six
#: rounds: 0.91x -> 0.92x and 0.83x -> 0.93x two bare loops, better in 5 of 6 rounds each; CPU per
#: task unchanged within the noise). The price: a popped task may wait for its moment up to about
#: three round trips (milliseconds against the test API).
AHEAD_ROUND_TRIPS = 4.0


def pop_horizon(round_trip: float) -> float:
    """How soon a busy worker must expect to be free to get its next pop now (see AHEAD_ROUND_TRIPS)."""
    return AHEAD_ROUND_TRIPS * round_trip


def free_moments(end: float | None, following: float | None, *, next_waiting: bool) -> list[float | None]:
    """The moments a busy worker will be free for a task popped now (None: unknown): the end of its
    task (``end``, see :func:`expected_free_at`), unless a next task waits in its pipe already for
    that one, and the moment after the task that follows (``following``: its usual time; of the
    boefje of the next task, or, with none sent yet, of the current one). Both are fixed times, not
    counted from now: the loop sleeps until the first one comes within the horizon
    (:func:`next_soon`), and a moment that moved with the clock would wake it again and again.

    Why two: a pop takes a round trip, and a boefje that takes less finishes its next task before
    a pop started when it began that task is back (a 50 ms pop and 25 ms tasks: the worker waited
    for half of every pop). Counting the moment after the next task, each worker finds a task
    waiting at both. Never more than two per worker, and each only once it is within the horizon
    (:func:`pops_wanted`): a slow boefje gets one task ahead, late, as before.
    """
    after = None if end is None or following is None else end + following
    return [after] if next_waiting else [end, after]


def pops_wanted(*, idle: int, free_at: Iterable[float | None], now: float, horizon: float, held: int,
                in_flight: int, prefetch: int = 0) -> int:
    """How many tasks to pop for now: one per idle worker and one per moment a busy worker will be
    free within the ``horizon`` (:func:`pop_horizon`; ``free_at``: the moments of :func:`free_moments`
    of every busy worker), plus the prefetch, minus the tasks (groups) already held and the moments
    the pops in flight are meant for. So a task waits only for a moment that comes within the
    horizon, at most two per worker (no hoarding)."""
    soon = sum(1 for when in free_at if when is not None and when <= now + horizon)
    return idle + soon + prefetch - held - in_flight


def next_soon(free_at: Iterable[float | None], now: float, horizon: float) -> float | None:
    """The earliest moment a busy worker not yet counted by :func:`pops_wanted` will be: when the
    loop must wake up to pop for it."""
    later = [when - horizon for when in free_at if when is not None and when > now + horizon]
    return min(later) if later else None


class PopThreads:
    """Runs pops in up to ``max_threads`` threads; the loop collects the answers with :meth:`answers`.

    ``api_factory`` makes one client per thread (a ``requests`` session is not shared between
    threads). ``in_flight`` counts pops started and not yet collected; ``slots_in_flight`` the
    workers they are meant for; ``limits_in_flight`` the most tasks they may bring.
    """

    def __init__(self, api_factory: Callable[[], BoefjeAPIClient], queue_name: str, task_filter: TaskFilter,
                 *, max_threads: int, tracer_factory: Callable[[], PopTracer] | None = None) -> None:
        self.api_factory = api_factory
        #: Tracing on: one PopTracer per thread, its client's header hook (one pop at a time each).
        self.tracer_factory = tracer_factory
        self.queue_name = queue_name
        self.task_filter = task_filter
        self.max_threads = max_threads
        self.round_trip = RunningAverage()
        self.in_flight = 0
        self.slots_in_flight = 0
        self.limits_in_flight = 0
        self._jobs: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._answers: deque[PopAnswer] = deque()
        self._threads: list[threading.Thread] = []
        self._waiting = 0  # threads blocked on the job queue
        self._queued = 0  # jobs put and not yet taken by a thread
        self._lock = threading.Lock()
        self._inline_api: tuple[BoefjeAPIClient, PopTracer | None] | None = None
        #: Set by the loop before it sleeps: False while no worker could take a task now nor soon
        #: as its next, so an answer waits for the step a worker's "done" brings (WorkerPool._wait).
        self.wake_on_answer = True
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False

    @property
    def answered(self) -> bool:
        """An answer is waiting to be collected (no system call: cheap to ask every step)."""
        return bool(self._answers)

    @property
    def wakeup_fd(self) -> int:
        """Readable when an answer is waiting: register it in the loop's selector."""
        return self._wake_r

    def request(self, limit: int, slots: int = 1) -> None:
        """Start one pop of up to ``limit`` tasks, meant for ``slots`` workers."""
        self.in_flight += 1
        self.slots_in_flight += slots
        self.limits_in_flight += limit
        if self.max_threads <= 0:
            if self._inline_api is None:
                self._inline_api = self._client()
            self._answer(self._pop(*self._inline_api, (limit, slots)))
            return
        with self._lock:
            # a new thread unless one is waiting with nothing to do: pops must not queue behind pops
            start = self._waiting <= self._queued and len(self._threads) < self.max_threads
            if start:
                thread = threading.Thread(target=self._serve, name=f"boefje-pop-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
            self._queued += 1
        self._jobs.put((limit, slots))
        if start:
            thread.start()

    def answers(self) -> list[PopAnswer]:
        """The answers that came back since the last call, oldest first (never blocks)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._wake_r, 4096):
                pass
        collected = []
        while self._answers:
            answer = self._answers.popleft()
            self.in_flight -= 1
            self.slots_in_flight -= answer.slots
            self.limits_in_flight -= answer.limit
            if answer.error is None:
                self.round_trip.add(answer.seconds)
            collected.append(answer)
        return collected

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (a pop in flight finishes first, up to ``timeout``; its answer is left
        uncollected: the caller collects and returns its tasks before closing)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._inline_api is not None:
            self._inline_api[0].close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- in the pop threads ------------------------------------------------------------------------

    def _client(self) -> tuple[BoefjeAPIClient, PopTracer | None]:
        api = self.api_factory()
        tracer = self.tracer_factory() if self.tracer_factory is not None else None
        if tracer is not None:
            api.header_hook = tracer
        return api, tracer

    def _serve(self) -> None:
        api, tracer = self._client()
        try:
            while True:
                with self._lock:
                    self._waiting += 1
                job = self._jobs.get()
                with self._lock:
                    self._waiting -= 1
                    self._queued -= job is not None
                if job is None:
                    return
                self._answer(self._pop(api, tracer, job))
        finally:
            api.close()

    def _pop(self, api: BoefjeAPIClient, tracer: PopTracer | None, job: tuple[int, int]) -> PopAnswer:
        limit, slots = job
        started = time.monotonic()
        if tracer is not None:
            tracer.before_pop()
        try:
            raw_tasks = api.pop_raw(self.queue_name, self.task_filter, limit)
        except Exception as exc:  # any failure must come back as an answer: the loop counts on it
            trace = tracer.after_pop(0) if tracer is not None else None
            return PopAnswer(limit, slots, None, exc, time.monotonic() - started, trace)
        trace = tracer.after_pop(len(raw_tasks)) if tracer is not None else None
        return PopAnswer(limit, slots, raw_tasks, None, time.monotonic() - started, trace)

    def _answer(self, answer: PopAnswer) -> None:
        self._answers.append(answer)  # before the flag is read: the loop checks for answers after setting it
        if self.wake_on_answer:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"!")
