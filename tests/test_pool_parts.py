"""The pool's pure parts (back-offs, duplicate grouping, exit descriptions, limits) and its loop
driven one step at a time with an injected clock."""

from __future__ import annotations

import signal
import time

import pytest

from boefje_runtime import BoefjeAPIClient, TaskFilter
from boefje_runtime.models import Task
from boefje_runtime.pool import PoolSettings, WorkerPool
from boefje_runtime.pool.backoff import ErrorBackoff, IdleBackoff, StartupGuard
from boefje_runtime.pool.dedup import group_duplicates
from boefje_runtime.pool.limits import retire_reason
from boefje_runtime.pool.process import describe_exit
from boefje_runtime.testing import make_task

from . import pool_boefjes


def test_idle_backoff_stays_short_right_after_work_then_doubles_up_to_the_poll_interval():
    backoff = IdleBackoff(first=0.02, ceiling=10.0, hot_window=1.0)
    backoff.got_work(now=100.0)
    assert [backoff.next_wait(100.5) for _ in range(3)] == [0.02, 0.02, 0.02]
    waits = [backoff.next_wait(102.0) for _ in range(12)]
    assert waits[:4] == [0.02, 0.04, 0.08, 0.16]
    assert waits[-1] == 10.0 and max(waits) == 10.0
    backoff.got_work(now=200.0)
    assert backoff.next_wait(202.0) == 0.02


def test_error_backoff_grows_with_jitter_and_resets():
    backoff = ErrorBackoff(first=1.0, ceiling=8.0)
    waits = [backoff.failed() for _ in range(6)]
    assert 0.5 <= waits[0] <= 1.0 and 4.0 <= waits[-1] <= 8.0
    backoff.succeeded()
    assert backoff.failed() <= 1.0


def test_startup_guard_paces_restarts_after_start_up_deaths():
    guard = StartupGuard(first=0.5, ceiling=4.0)
    assert guard.may_start(0.0)
    assert [guard.died_starting(now) for now in (0.0, 1.0, 3.0, 7.0, 20.0)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert not guard.may_start(23.9) and guard.may_start(24.0)
    guard.started()
    assert guard.may_start(0.0)


def _task(**kwargs) -> Task:
    return Task.from_dict(make_task("dns", **kwargs))


def test_duplicates_group_by_visible_key_or_by_boefje_input_and_environment():
    a1, a2 = _task(deduplication_key="a"), _task(deduplication_key="a")
    same1 = _task(input_ooi="x", environment={"K": "1"})
    same2 = _task(input_ooi="x", environment={"K": "1"})
    other_env = _task(input_ooi="x", environment={"K": "2"})
    other_input = _task(input_ooi="y", environment={"K": "1"})

    groups = group_duplicates([a1, same1, a2, other_env, same2, other_input])

    assert [[task.id for task in group] for group in groups] == [
        [a1.id, a2.id], [same1.id, same2.id], [other_env.id], [other_input.id]
    ]
    assert all(len(group) == 1 for group in group_duplicates([a1, a2], enabled=False))


def test_exits_are_described_with_the_signal_and_the_likely_oom():
    assert describe_exit(3) == "exited with code 3"
    assert "SIGSEGV" in describe_exit(-signal.SIGSEGV)
    assert "OOM killer is the likely cause" in describe_exit(-signal.SIGKILL)
    assert "out of memory" in describe_exit(-signal.SIGKILL, oom_kills=1)


def test_retire_reasons():
    assert retire_reason(2, None, None) is None
    assert retire_reason(2, 2, None) == "max tasks per child reached (2 tasks)"
    assert retire_reason(1, 5, 0.001).startswith("max memory per child passed")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stepped_pool(boefje_api):
    clock = FakeClock()
    pool = WorkerPool(
        BoefjeAPIClient(boefje_api.url),
        TaskFilter([pool_boefjes.IMAGE]),
        registry=pool_boefjes.registry(),
        settings=PoolSettings(pool_size=1, poll_interval=10.0, first_poll_wait=0.02, hot_window=1.0,
                              task_timeout=5.0, shutdown_timeout=1.0),
        clock=clock,
    )
    deadline = time.monotonic() + 10
    while not any(worker.ready for worker in pool.workers):  # real time: a process has to boot
        assert time.monotonic() < deadline, "the worker did not come up"
        pool.step()
        time.sleep(0.005)
    yield pool, clock
    pool.request_shutdown(immediate=True)
    deadline = time.monotonic() + 10
    while pool.phase != "stopped" and time.monotonic() < deadline:
        clock.now += 0.1
        pool.step()
        time.sleep(0.005)
    pool._close()


def test_an_idle_pool_pops_at_most_once_per_poll_interval(boefje_api, stepped_pool):
    pool, clock = stepped_pool
    start = boefje_api.request_counts().get("pop", 0)
    for _ in range(600):  # ten simulated minutes of an empty queue, one step a second
        clock.now += 1.0
        pool.step()
    pops = boefje_api.request_counts()["pop"] - start
    assert 60 <= pops <= 60 + 12  # one per 10 s, plus the short waits while backing off


def test_an_overdue_task_is_killed_at_the_step_after_its_deadline(boefje_api, stepped_pool, tmp_path):
    pool, clock = stepped_pool
    arguments = {"pid_file": str(tmp_path / "pid"), "release_file": str(tmp_path / "never"), "max_wait": 30}
    task_id = boefje_api.enqueue(make_task("hold", oci_image=pool_boefjes.IMAGE, arguments=arguments))
    deadline = time.monotonic() + 10
    while not (tmp_path / "pid").exists():
        assert time.monotonic() < deadline, "the task did not start"
        clock.now += 0.05
        pool.step()
        time.sleep(0.005)

    started = pool.workers[0].assignment.started  # the deadline counts from here, not from the pid file
    clock.now = started + 4.9
    pool.step()
    assert pool.workers[0].kill_reason is None
    clock.now = started + 5.1
    pool.step()
    assert pool.workers[0].kill_reason == "timed out after 5 s"
    deadline = time.monotonic() + 10
    while boefje_api.status(task_id) != "failed":
        assert time.monotonic() < deadline, "the task was not failed"
        pool.step()
        time.sleep(0.005)
