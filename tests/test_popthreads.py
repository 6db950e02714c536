"""Pops in flight (``boefje_runtime.pool.popthreads``): the demand rule as pure functions, and the
threads against the real test Boefje API."""

from __future__ import annotations

import select
import threading
import time

import pytest

from boefje_runtime import BoefjeAPIClient, RetryPolicy, TaskFilter
from boefje_runtime.pool.events import PoolEvents
from boefje_runtime.pool.popthreads import (
    PopThreads,
    TaskDurations,
    expected_free_at,
    free_moments,
    next_soon,
    pop_horizon,
    pops_wanted,
)
from boefje_runtime.testing import make_task

from .helpers import hold_task, new_pool, ready_workers, task, wait_until

IMAGE = "ghcr.io/minvws/openkat/test:latest"
NO_RETRY = RetryPolicy(attempts=1, total_seconds=1.0, initial_wait=0.01, max_wait=0.01)

# -- the demand rule -------------------------------------------------------------------------------


def test_idle_workers_each_want_a_pop_less_what_is_held_and_in_flight():
    assert pops_wanted(idle=3, free_at=[], now=0, horizon=0.05, held=1, in_flight=1) == 1


def test_a_busy_worker_wants_a_pop_only_when_free_within_the_horizon():
    # given workers free at 0.03 (within 50 ms), at 0.2 (not yet), and one of unknown duration
    free_at = [0.03, 0.2, None]

    wanted = pops_wanted(idle=0, free_at=free_at, now=0.0, horizon=0.05, held=0, in_flight=0)

    assert wanted == 1
    # and the loop wakes when the second one gets within the horizon of its end
    assert next_soon(free_at, 0.0, 0.05) == pytest.approx(0.15)


def test_the_horizon_is_four_round_trips_so_the_answer_comes_before_the_worker_is_free():
    # given 50 ms pops: a moment 180 ms away gets its pop now (with one round trip of horizon the
    # answer would come about when it is free, and it would wait half the time)
    round_trip = 0.05
    free_at = [0.18, 0.23]

    wanted = pops_wanted(idle=0, free_at=free_at, now=0.0, horizon=pop_horizon(round_trip), held=0, in_flight=0)

    assert wanted == 1
    assert next_soon(free_at, 0.0, pop_horizon(round_trip)) == pytest.approx(0.03)


def test_a_busy_worker_is_free_at_the_end_of_its_task_and_at_the_end_of_the_one_after():
    assert free_moments(0.03, 0.025, next_waiting=False) == pytest.approx([0.03, 0.055])
    # a next task waits in its pipe for the first moment already
    assert free_moments(0.03, 0.025, next_waiting=True) == pytest.approx([0.055])
    # an end or a duration not known: no moment
    assert free_moments(None, 0.025, next_waiting=False) == [None, None]
    assert free_moments(0.03, None, next_waiting=True) == [None]


def test_a_boefje_shorter_than_a_pop_gets_two_pops_per_worker_a_slow_one_one_late():
    # given 50 ms pops
    horizon = pop_horizon(0.05)
    # a 25 ms boefje that just began: a pop for its end and one for the end of the task after
    short = free_moments(0.025, 0.025, next_waiting=False)
    assert pops_wanted(idle=0, free_at=short, now=0.0, horizon=horizon, held=0, in_flight=0) == 2
    assert pops_wanted(idle=0, free_at=short, now=0.0, horizon=horizon, held=1, in_flight=1) == 0
    # a boefje of a second: nothing now, one pop once its end is within the horizon, never two
    slow = free_moments(1.0, 1.0, next_waiting=False)
    assert pops_wanted(idle=0, free_at=slow, now=0.0, horizon=horizon, held=0, in_flight=0) == 0
    assert pops_wanted(idle=0, free_at=slow, now=0.9, horizon=horizon, held=0, in_flight=0) == 1


def test_no_hoarding_a_task_held_or_in_flight_covers_the_worker_it_was_popped_for():
    # one worker about to be free; a pop for it is already in flight, then its answer is held
    assert pops_wanted(idle=0, free_at=[0.01], now=0, horizon=0.05, held=0, in_flight=1) == 0
    assert pops_wanted(idle=0, free_at=[0.01], now=0, horizon=0.05, held=1, in_flight=0) == 0


def test_a_boefje_never_seen_or_running_far_past_its_usual_time_gets_nothing_ahead():
    assert expected_free_at(10.0, None, 10.0, 0.05) is None
    assert expected_free_at(10.0, 0.02, 10.01, 0.05) == pytest.approx(10.02)
    assert expected_free_at(10.0, 0.02, 10.2, 0.05) is None  # 200 ms into a 20 ms boefje


def test_task_durations_are_a_running_average_per_boefje():
    durations = TaskDurations()
    durations.add("dns", 0.02)
    durations.add("dns", 0.04)
    durations.add("nmap", 60.0)

    assert 0.02 < durations.expected("dns") < 0.04
    assert durations.expected("nmap") == 60.0
    assert durations.expected("other") is None


def test_task_durations_are_learnt_from_who_holds_which_task():
    durations = TaskDurations()
    # worker 7 gets a dns task at 1.0, worker 8 an nmap task at 1.0
    durations.watch([(7, "dns", 1.0), (8, "nmap", 1.0)], 1.0)
    # at 1.03 worker 7 holds its next task (handed out at 1.03): the first took 30 ms
    durations.watch([(7, "dns", 1.03), (8, "nmap", 1.0)], 1.03)
    assert durations.expected("dns") == pytest.approx(0.03)
    assert durations.expected("nmap") is None  # still running
    # at 2.0 both are idle
    durations.watch([], 2.0)
    assert durations.expected("nmap") == pytest.approx(1.0)


# -- the threads -----------------------------------------------------------------------------------


def new_threads(url: str, max_threads: int) -> PopThreads:
    client = BoefjeAPIClient(url, timeout=10, retry=NO_RETRY)
    return PopThreads(client.clone, "boefje", TaskFilter(oci_images=[IMAGE]), max_threads=max_threads)


@pytest.mark.boefje_api(pop_mode="single")
def test_pops_are_in_flight_together_and_wake_the_loop_when_answered(boefje_api):
    # given a slow scheduler and three queued tasks
    ids = boefje_api.enqueue([make_task("dns", oci_image=IMAGE) for _ in range(3)])
    boefje_api.inject("pop", delay=1.0, times=None)
    pops = new_threads(boefje_api.url, max_threads=3)
    try:
        # when three pops are started
        for _ in range(3):
            pops.request(1)

        # then all three reach the server before the first is answered
        wait_until(lambda: boefje_api.request_counts().get("pop", 0) == 3, 5, "three pops at the server")
        assert pops.in_flight == 3 and pops.answers() == []
        # and the loop's fd wakes it once answers are there
        assert select.select([pops.wakeup_fd], [], [], 5)[0]
        answers = []
        wait_until(lambda: answers.extend(pops.answers()) or len(answers) == 3, 5, "three answers")
        assert sorted(task["id"] for answer in answers for task in answer.raw_tasks) == sorted(ids)
        assert pops.in_flight == 0 and pops.limits_in_flight == 0
        assert pops.round_trip.value >= 1.0
    finally:
        pops.close()


def test_an_answer_wakes_the_loop_only_while_it_asks_to_be_woken(boefje_api):
    # given a queued task and a loop that has no worker free (it does not want to be woken)
    boefje_api.enqueue([make_task("dns", oci_image=IMAGE) for _ in range(2)])
    pops = new_threads(boefje_api.url, max_threads=1)
    try:
        pops.wake_on_answer = False

        # when a pop is answered
        pops.request(1)
        wait_until(lambda: pops.answered, 5, "the answer")

        # then the loop's fd stays quiet, yet the answer is there for its next step
        assert not select.select([pops.wakeup_fd], [], [], 0)[0]
        assert len(pops.answers()) == 1
        # and once the loop asks to be woken, the next answer wakes it
        pops.wake_on_answer = True
        pops.request(1)
        assert select.select([pops.wakeup_fd], [], [], 5)[0]
    finally:
        pops.close()


def test_an_unreachable_api_comes_back_as_an_answer_with_the_error(boefje_api):
    boefje_api.inject("pop", status=503, times=None)
    pops = new_threads(boefje_api.url, max_threads=1)
    try:
        pops.request(2)
        answers = []
        wait_until(lambda: answers.extend(pops.answers()) or answers, 5, "an answer")
        assert answers[0].raw_tasks is None and "503" in str(answers[0].error)
        assert pops.in_flight == 0
    finally:
        pops.close()


def test_without_threads_a_pop_runs_inline(boefje_api):
    # given no threads (step-driven tests): the answer is there as soon as request returns
    boefje_api.enqueue([make_task("dns", oci_image=IMAGE)])
    pops = new_threads(boefje_api.url, max_threads=0)
    try:
        pops.request(1)

        (answer,) = pops.answers()
        assert len(answer.raw_tasks) == 1
    finally:
        pops.close()


# -- in the pool -----------------------------------------------------------------------------------


class TurnCounter(PoolEvents):
    def __init__(self) -> None:
        self.turns = 0

    def loop_turned(self, now: float) -> None:
        self.turns += 1


def test_the_loop_sleeps_while_a_slow_pop_is_in_flight(boefje_api):
    # given a scheduler whose pops take a second, and a pool whose workers come up one by one
    boefje_api.inject("pop", delay=1.0, times=None)
    counter = TurnCounter()
    pool = new_pool(boefje_api.url, pool_size=2, listeners=[counter]).start()
    try:
        wait_until(lambda: boefje_api.request_counts().get("pop", 0) >= 1, 10, "a pop at the server")
        wait_until(lambda: ready_workers(pool) == 2, 10, "both workers ready")
        turns = counter.turns

        # when the second worker waits while the first pop is still out
        time.sleep(0.5)  # a window to count the loop's turns in, not a synchronisation

        # then the loop does not spin on it: the answer wakes it (a spinning loop turns thousands of times)
        assert counter.turns - turns < 20
    finally:
        pool.stop(immediate=True, timeout=20)


class ConcurrentPops:
    """Counts the pops the test API is answering at once (a pop's delay is slept between its
    arrival and its answer)."""

    def __init__(self, api) -> None:
        self.now = self.most = 0
        self._lock = threading.Lock()
        arrival, dispatch = api._arrival, api._dispatch

        def counting_arrival(endpoint, *, routed):
            if endpoint == "pop":
                with self._lock:
                    self.now += 1
                    self.most = max(self.most, self.now)
            return arrival(endpoint, routed=routed)

        def counting_dispatch(endpoint, *args):
            try:
                return dispatch(endpoint, *args)
            finally:
                if endpoint == "pop":
                    with self._lock:
                        self.now -= 1

        api._arrival, api._dispatch = counting_arrival, counting_dispatch


def work_through(boefje_api, pool, ids: list[str]) -> None:
    """Start ``pool`` and stop it once every task of ``ids`` completed (within a minute)."""
    pool.start()
    try:
        boefje_api.wait_for_status(ids, "completed", timeout=60)
    finally:
        pool.stop(immediate=True, timeout=20)


def test_a_worker_of_a_boefje_shorter_than_a_pop_has_two_pops_out_at_once_never_three(boefje_api):
    # given a scheduler whose pops take 0.3 s, a boefje that returns at once, and one worker
    pops = ConcurrentPops(boefje_api)
    boefje_api.inject("pop", delay=0.3, times=None)
    ids = boefje_api.enqueue([task() for _ in range(12)])
    pool = new_pool(boefje_api.url, pool_size=1)
    # (what the pool asks for, counted before its pop threads, which are as many: 2 per worker)
    request, asked = pool._poller.pops.request, []

    def counting_request(limit: int, slots: int = 1) -> None:
        request(limit, slots)
        asked.append(pool._poller.pops.slots_in_flight)

    pool._poller.pops.request = counting_request
    # when it works through them
    work_through(boefje_api, pool, ids)

    # then, once it knew how long a pop and a task take, a pop was out for the end of its task and
    # one for the end of the task after (one pop at a time leaves it idle most of each pop), never more
    assert pops.most == 2
    assert max(asked) == 2


def test_a_worker_on_its_last_task_has_one_pop_out_for_its_replacement_never_two(boefje_api):
    # given a scheduler whose pops take 0.3 s, a boefje that returns at once, and one worker that
    # is replaced after every task (MAX_TASKS_PER_CHILD=1)
    pops = ConcurrentPops(boefje_api)
    boefje_api.inject("pop", delay=0.3, times=None)
    ids = boefje_api.enqueue([task() for _ in range(8)])
    pool = new_pool(boefje_api.url, pool_size=1, max_tasks_per_child=1)
    # when it works through them
    work_through(boefje_api, pool, ids)

    # then one pop was out at a time, for the replacement: the worker is not free again after its
    # task, so there is no moment after that one to pop for (a worker that stays has two pops out)
    assert pops.most == 1


def test_a_worker_on_its_last_task_is_sent_no_next_task(boefje_api, tmp_path):
    # given a scheduler whose pops take 0.1 s, a boefje that takes 0.3 s (a pop for the end of a
    # task comes back while it runs), and one worker replaced after every task
    boefje_api.inject("pop", delay=0.1, times=None)
    ids = boefje_api.enqueue([hold_task(tmp_path, f"t{i}", max_wait=0.3)[0] for i in range(6)])
    watcher = NextTaskWatcher(None)
    pool = new_pool(boefje_api.url, pool_size=1, max_tasks_per_child=1, listeners=[watcher])
    watcher.pool = pool
    # when it works through them
    work_through(boefje_api, pool, ids)

    # then no task was sent into the pipe of a worker that leaves after its task (it would only
    # be read back): each waited with the supervisor for the replacement
    assert not watcher.seen_next


class NextTaskWatcher(PoolEvents):
    """Notes, at every turn of the loop, whether the worker holding ``task_id`` (None: any worker)
    has a next task."""

    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self.pool = None
        self.seen_next = False

    def loop_turned(self, now: float) -> None:
        for worker in self.pool.workers if self.pool is not None else ():
            assignment = worker.assignment
            if (assignment is not None and self.task_id in (None, assignment.task.id)
                    and worker.holds_task):
                self.seen_next = self.seen_next or worker.next is not None


def test_a_task_popped_ahead_never_waits_behind_a_boefje_whose_length_is_not_known(boefje_api, tmp_path):
    # given one worker running a boefje that runs until released (its length not known yet)
    long_task, pid_file, release = hold_task(tmp_path, "long")
    [long_id] = boefje_api.enqueue([long_task])
    watcher = NextTaskWatcher(long_id)
    pool = new_pool(boefje_api.url, pool_size=2, listeners=[watcher])
    watcher.pool = pool
    pool.start()
    try:
        wait_until(pid_file.exists, 20, "the long boefje running")

        # when quick tasks come for the other worker, which takes them one after another
        quick = boefje_api.enqueue([task() for _ in range(40)])
        boefje_api.wait_for_status(quick, "completed", timeout=60)

        # then none of them was sent into the long one's pipe, to wait there until it ends
        assert not watcher.seen_next
        release.touch()
        boefje_api.wait_for_status([long_id], "completed", timeout=30)
    finally:
        release.touch()
        pool.stop(immediate=True, timeout=20)
