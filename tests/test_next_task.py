"""A worker's next task, sent into its pipe while it posts its output (``WorkerHandle.next``).

The supervisor cannot take such a task back, so every way the worker can leave before it reads the
task must give it back unstarted: it retires, it is killed, it gets SIGTERM at the drain's deadline.
Real pools against the test Boefje API over HTTP; the output POST that keeps the worker delivering is
held by a gate. Each test first waits until the next task was really sent (the handle's ``next``),
so the edge it is about is taken, not the old way round through the supervisor.

How the next task gets there: pops took 0.6 s so far (the pool's round trip) and take 0.2 s now;
the boefje's usual time is learned from two quick tasks. So the pop for the second task starts when
the first is handed out, and comes back while the first one's output is held: the worker is then
delivering for less than a round trip, which is when it may be sent its next task.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from boefje_runtime.pool import WorkerPool
from boefje_runtime.pool.lifecycle import WorkerState
from boefje_runtime.pool.process import SEND_AHEAD_BYTES

from .helpers import GatedAPI, alive, hold_task, running_gated_api, wait_until

pytestmark = pytest.mark.timeout(90)

#: Pop delays: while the pool learns its round trip, then while the tests run.
LEARNING_POP, TESTED_POP = 0.6, 0.2


@pytest.fixture
def boefje_api() -> Iterator[GatedAPI]:
    """The test API with gates (``make_pool`` uses this one too)."""
    with running_gated_api() as api:
        yield api


def quick_task(tmp_path: Path, name: str) -> tuple[dict, Path]:
    """A task of the "hold" boefje that returns at once, writing its worker's pid to the returned file."""
    task, pid_file, release = hold_task(tmp_path, name)
    release.touch()
    return task, pid_file


def learned_pool(boefje_api: GatedAPI, make_pool, tmp_path: Path, **options) -> WorkerPool:
    """A started pool of one worker that knows the pops' round trip and the boefje's usual time."""
    boefje_api.inject("pop", delay=LEARNING_POP, times=None)
    pool = make_pool(pool_size=1, **options).start()
    warm_up = [boefje_api.enqueue(quick_task(tmp_path, f"warm-{index}")[0]) for index in range(2)]
    boefje_api.wait_for_status(warm_up, "completed", timeout=30)
    boefje_api.clear_faults()
    boefje_api.inject("pop", delay=TESTED_POP, times=None)
    return pool


def next_sent_while_delivering(boefje_api: GatedAPI, pool: WorkerPool, tmp_path: Path):
    """Enqueue a first task whose output POST is held, and a second; wait until the second was sent
    to the first one's worker as its next task. Returns both ids, both pid files and the gate."""
    first, first_pid = quick_task(tmp_path, "first")
    second, second_pid = quick_task(tmp_path, "second")
    first_id = boefje_api.enqueue(first)
    gate = boefje_api.gate("output", first_id)  # (set within the pop's delay: before the boefje runs)
    second_id = boefje_api.enqueue(second)
    assert gate.arrived.wait(15), "the first task's output never arrived"
    wait_until(lambda: any(worker.next is not None and worker.next.task.id == second_id for worker in pool.workers),
               10, "the second task to be sent to the delivering worker")
    assert boefje_api.history(second_id) == ["queued", "dispatched"]
    return first_id, second_id, first_pid, second_pid, gate


def test_a_delivering_worker_is_sent_its_next_task_and_runs_it_once_done(boefje_api, make_pool, tmp_path):
    # Given a worker sent its next task while its output POST is held
    pool = learned_pool(boefje_api, make_pool, tmp_path)
    first_id, second_id, first_pid, second_pid, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When the output goes through
    gate.open()

    # Then the same worker runs the next task, once
    boefje_api.wait_for_status([first_id, second_id], "completed", timeout=15)
    assert second_pid.read_text() == first_pid.read_text()
    assert boefje_api.history(second_id) == ["queued", "dispatched", "running", "completed"]
    assert pool.stop(timeout=30) == 0


@pytest.mark.parametrize("task_limit", [None, 4], ids=["no-limit", "limit-reached-with-it"])
def test_a_next_task_sent_to_a_worker_that_retires_runs_on_another(boefje_api, make_pool, tmp_path, task_limit):
    # Given a worker that leaves after each task, sent its next task while it delivers (and, with a
    # task limit of 4, that task is the last one the pool may pop: the pool must not end before it ran)
    pool = learned_pool(boefje_api, make_pool, tmp_path, max_tasks_per_child=1, max_tasks=task_limit)
    first_id, second_id, first_pid, second_pid, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When it finishes its task and retires without reading the next one
    gate.open()

    # Then the next task is given back unstarted and runs on the worker that replaces it
    boefje_api.wait_for_status([first_id, second_id], "completed", timeout=30)
    assert second_pid.read_text() != first_pid.read_text()
    assert boefje_api.history(second_id) == ["queued", "dispatched", "running", "completed"]
    assert pool.stop(timeout=30) == 0
    assert pool.stats.started == 4  # two to learn, the first and the next: each counted once


def test_a_task_too_big_to_wait_in_a_pipe_waits_in_the_supervisor(boefje_api, make_pool, tmp_path):
    # Given a worker delivering its output (held), and a next task larger than a pipe should hold
    # while nobody reads it
    pool = learned_pool(boefje_api, make_pool, tmp_path)
    first, _ = quick_task(tmp_path, "first")
    second, second_pid = quick_task(tmp_path, "second")
    second["data"]["arguments"]["padding"] = "x" * (SEND_AHEAD_BYTES + 1)
    first_id = boefje_api.enqueue(first)
    gate = boefje_api.gate("output", first_id)
    second_id = boefje_api.enqueue(second)
    assert gate.arrived.wait(15), "the first task's output never arrived"

    # When its pop comes back
    boefje_api.wait_for_status(second_id, "dispatched", timeout=15)
    wait_until(lambda: pool._held, 10, "the popped task to be held")  # (the step after the answer)

    # Then it is not sent ahead (a blocked send would stall the supervisor), and runs once the
    # worker is free
    assert all(worker.next is None for worker in pool.workers)
    gate.open()
    boefje_api.wait_for_status([first_id, second_id], "completed", timeout=15)
    assert second_pid.exists()
    assert pool.stop(timeout=30) == 0


def test_a_next_task_sent_to_a_worker_killed_while_delivering_runs_on_another(boefje_api, make_pool, tmp_path):
    # Given a worker sent its next task while its output POST is held
    pool = learned_pool(boefje_api, make_pool, tmp_path)
    first_id, second_id, first_pid, second_pid, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)
    worker_pid = int(first_pid.read_text())

    # When the worker is killed before it reports its task done
    os.kill(worker_pid, signal.SIGKILL)

    # Then the next task, never started, runs on the worker that replaces it (not failed with it)
    boefje_api.wait_for_status(second_id, "completed", timeout=30)
    assert int(second_pid.read_text()) != worker_pid
    assert boefje_api.history(second_id) == ["queued", "dispatched", "running", "completed"]
    gate.open()  # the dead worker's held output lands or the supervisor closes it: either way closed
    wait_until(lambda: boefje_api.status(first_id) in ("completed", "failed"), 15, "the first task to be closed")
    assert pool.stop(timeout=30) == 0
    assert pool.stats.started == 4


def test_a_next_task_sent_before_the_drain_runs_within_the_grace_period(boefje_api, make_pool, tmp_path):
    # Given a worker sent its next task while its output POST is held
    pool = learned_pool(boefje_api, make_pool, tmp_path, shutdown_timeout=20)
    first_id, second_id, _, _, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When the pool drains, and the output then goes through
    stopping = stop_in_background(pool)
    wait_until(lambda: pool.phase == "draining", 10, "the drain to begin")
    gate.open()

    # Then the next task, handed out before the drain, runs like any started task
    boefje_api.wait_for_status([first_id, second_id], "completed", timeout=20)
    stopping.join(30)
    assert stopping.code == 0


def test_a_next_task_goes_back_unchanged_when_its_worker_gets_sigterm_at_the_drain_deadline(
    boefje_api, make_pool, tmp_path
):
    # Given a worker sent its next task while its output POST is held, and a short grace period
    pool = learned_pool(boefje_api, make_pool, tmp_path, shutdown_timeout=0.5)
    first_id, second_id, first_pid, _, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When the grace period ends (SIGTERM to the worker's group), and then the output goes through
    stopping = stop_in_background(pool)
    wait_until(lambda: any(worker.state is WorkerState.TERMINATING for worker in pool.workers), 10,
               "the drain's SIGTERM")
    gate.open()

    # Then the worker finishes its task and leaves without starting the next one, which goes back
    # to the queue unchanged (not failed, not run)
    boefje_api.wait_for_status(first_id, "completed", timeout=15)
    boefje_api.wait_for_status(second_id, "queued", timeout=15)
    assert "running" not in boefje_api.history(second_id)
    stopping.join(30)
    assert stopping.code == 0
    wait_until(lambda: not alive(int(first_pid.read_text())), 10, "the worker to leave")


class _Stopping(threading.Thread):
    def __init__(self, pool: WorkerPool) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.code: int | None = None

    def run(self) -> None:
        self.code = self.pool.stop(timeout=60)


def stop_in_background(pool: WorkerPool) -> _Stopping:
    """``pool.stop()`` (a graceful drain) in a thread, so the test can act during the drain."""
    stopping = _Stopping(pool)
    stopping.start()
    return stopping
