"""A worker's next task, sent into its next-task pipe while it still works (``WorkerHandle.next``).

The supervisor reads such a task back while the worker has not read it: for a worker that is idle
sooner, at a drain, and when the worker leaves before it gets to it (it retires, it is killed, it
gets SIGTERM at the drain's deadline); each way gives it back unstarted.
Real pools against the test Boefje API over HTTP; the output POST that keeps the worker delivering is
held by a gate. Each test first waits until the next task was really sent (the handle's ``next``),
so the edge it is about is taken, not the old way round through the supervisor.

How the next task gets there: pops took 0.6 s so far (the pool's round trip) and take 0.2 s now;
the boefje's usual time is learned from two quick tasks. The second task is enqueued once the
first one's output is held (enqueued together, the pool's two pops for one worker may bring the
second first, and it runs first); its pop comes back while the worker is delivering, which is when
it may be sent its next task.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from boefje_runtime.pool import WorkerPool
from boefje_runtime.pool.lifecycle import WorkerState
from boefje_runtime.pool.process import SEND_AHEAD_BYTES

from .helpers import GatedAPI, alive, hold_task, running_gated_api, task, wait_until

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
    assert gate.arrived.wait(15), "the first task's output never arrived"
    # enqueued now, not with the first: with two pops out for one worker (pop-ahead counts the end of
    # the task after the next), the answer for the second may come first and run first
    second_id = boefje_api.enqueue(second)
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
    # task limit of 4, that task is the last one the pool may pop: the pool must not end before it ran).
    # It leaves on a memory limit (1 MiB: passed after every task), which the supervisor cannot
    # foresee; a task limit it can, and it sends no next task then (test_popthreads.py)
    pool = learned_pool(boefje_api, make_pool, tmp_path, max_memory_per_child=1.0, max_tasks=task_limit)
    first_id, second_id, first_pid, second_pid, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When it finishes its task and retires without reading the next one
    gate.open()

    # Then the next task is given back unstarted and runs on the worker that replaces it
    boefje_api.wait_for_status([first_id, second_id], "completed", timeout=30)
    assert second_pid.read_text() != first_pid.read_text()
    assert boefje_api.history(second_id) == ["queued", "dispatched", "running", "completed"]
    assert pool.stop(timeout=30) == 0
    assert pool.stats.started == 4  # two to learn, the first and the next: each counted once


def test_a_next_task_behind_an_overrunning_boefje_goes_to_the_worker_that_is_free_first(
    boefje_api, make_pool, tmp_path
):
    # Given two workers that learned their boefje takes about a second, both now running it much
    # longer (held), and a third task sent ahead into one of their pipes (a task is sent ahead only to
    # a worker that should be free within the pop horizon: learned as a second, that holds for the
    # second or two this takes, also under load)
    boefje_api.inject("pop", delay=LEARNING_POP, times=None)
    pool = make_pool(pool_size=2).start()
    warm_up = [boefje_api.enqueue(hold_task(tmp_path, f"warm-{index}", max_wait=1.0)[0]) for index in range(4)]
    boefje_api.wait_for_status(warm_up, "completed", timeout=30)
    boefje_api.clear_faults()
    boefje_api.inject("pop", delay=TESTED_POP, times=None)
    held = {name: hold_task(tmp_path, name) for name in ("left", "right")}
    held_ids = {boefje_api.enqueue(task): name for name, (task, _, _) in held.items()}
    boefje_api.wait_for_status(list(held_ids), "running", timeout=15)
    third, third_pid = quick_task(tmp_path, "third")
    third_id = boefje_api.enqueue(third)
    wait_until(lambda: any(worker.next is not None and worker.next.task.id == third_id for worker in pool.workers),
               10, "the third task to be sent ahead to a busy worker")
    [holder] = [worker for worker in pool.workers if worker.next is not None]
    stuck = held_ids[holder.assignment.task.id]
    other = next(name for name in held if name != stuck)

    # When the other worker's boefje returns
    held[other][2].touch()

    # Then the third task runs on that worker at once, not behind the stuck boefje (still running)
    boefje_api.wait_for_status(third_id, "completed", timeout=10)
    assert third_pid.read_text() == held[other][1].read_text()
    assert boefje_api.history(third_id) == ["queued", "dispatched", "running", "completed"]
    assert boefje_api.status(next(i for i, name in held_ids.items() if name == stuck)) == "running"
    held[stuck][2].touch()
    assert pool.stop(timeout=30) == 0


def test_a_task_too_big_to_wait_in_a_pipe_waits_in_the_supervisor(boefje_api, make_pool, tmp_path):
    # Given a worker delivering its output (held), and a next task larger than a pipe should hold
    # while nobody reads it
    pool = learned_pool(boefje_api, make_pool, tmp_path)
    first, _ = quick_task(tmp_path, "first")
    second, second_pid = quick_task(tmp_path, "second")
    second["data"]["arguments"]["padding"] = "x" * (SEND_AHEAD_BYTES + 1)
    first_id = boefje_api.enqueue(first)
    gate = boefje_api.gate("output", first_id)
    assert gate.arrived.wait(15), "the first task's output never arrived"
    second_id = boefje_api.enqueue(second)  # (now: see next_sent_while_delivering)

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


def test_a_next_task_still_in_its_pipe_at_the_drain_goes_back_to_the_queue(boefje_api, make_pool, tmp_path):
    # Given a worker sent its next task while its output POST is held
    pool = learned_pool(boefje_api, make_pool, tmp_path, shutdown_timeout=20)
    first_id, second_id, _, _, gate = next_sent_while_delivering(boefje_api, pool, tmp_path)

    # When the pool drains, and the output then goes through
    stopping = stop_in_background(pool)
    wait_until(lambda: pool.phase == "draining", 10, "the drain to begin")
    gate.open()

    # Then the running task finishes in the grace period, and the next one, which the worker never
    # read, goes back to the queue unchanged (a drain starts nothing new)
    boefje_api.wait_for_status(first_id, "completed", timeout=20)
    boefje_api.wait_for_status(second_id, "queued", timeout=20)
    assert "running" not in boefje_api.history(second_id)
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


def test_a_worker_runs_the_task_in_its_pipe_before_the_one_waiting_ahead(boefje_api, tmp_path):
    # Given a worker process whose pipe holds a task (sent while the supervisor saw it idle) and whose
    # next-task pipe holds another (sent ahead once it held the first), both there before it looks
    from boefje_runtime.client import BoefjeAPIClient
    from boefje_runtime.pool.progress import ProgressPage
    from boefje_runtime.pool.worker import WorkerSpec, worker_main

    from . import pool_boefjes

    ids = boefje_api.enqueue([task(), task()])
    with BoefjeAPIClient(boefje_api.url) as client:
        [piped], [ahead] = client.pop_raw(), client.pop_raw()
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    page, page_fd = ProgressPage.create()
    next_r, next_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    ours.send(("task", piped, [], None))
    os.write(next_w, pickle.dumps(("task", ahead, [], None)))
    spec = WorkerSpec(client_factory=lambda: BoefjeAPIClient(boefje_api.url), registry=pool_boefjes.registry(),
                      max_output_bytes=None, max_tasks_per_child=None, max_memory_per_child=None)
    worker = multiprocessing.get_context("fork").Process(
        target=worker_main, args=(theirs, spec, os.getpid(), page_fd, next_r), daemon=True)

    # When it starts
    worker.start()
    try:
        messages = [ours.recv() if ours.poll(15) else None for _ in range(3)]
        ours.send(("stop",))
        worker.join(15)
    finally:
        if worker.is_alive():
            worker.kill()
            worker.join(5)
        page.close()
        for fd in (page_fd, next_r, next_w):
            os.close(fd)

    # Then it runs the task from its pipe first, then the one waiting ahead
    assert [message[:2] for message in messages] == [("ready", worker.pid), ("done", piped["id"]),
                                                     ("done", ahead["id"])]
    boefje_api.wait_for_status(ids, "completed", timeout=15)


@pytest.mark.parametrize("stale_poll", [True, False], ids=["poll-saw-only-the-next-pipe", "poll-saw-both"])
def test_a_task_in_the_supervisors_pipe_goes_first_even_when_the_poll_saw_only_the_next_task(stale_poll):
    # Given a worker's two pipes as the supervisor leaves them when it read a task back out of the
    # next-task pipe, handed the worker another through its own pipe, then sent the first again as
    # its next; and a poll taken before all that, which saw only the next-task pipe (or one after it)
    from boefje_runtime.pool.worker import _take

    supervisor_end, worker_end = multiprocessing.get_context("fork").Pipe()
    next_r, next_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        handed = ("task", {"id": "handed"}, [], None)
        again = ("task", {"id": "sent-again-as-next"}, [], None)
        supervisor_end.send(handed)
        os.write(next_w, pickle.dumps(again))

        # When the worker takes what to run
        now, after = _take(worker_end, next_r, not stale_poll, lambda: worker_end.poll(0))

        # Then the handed task runs now and the next one right after it, whichever pipe the poll saw
        assert (now[1]["id"], after[1]["id"] if after else None) == (
            ("handed", "sent-again-as-next") if stale_poll else ("handed", None))
    finally:
        supervisor_end.close()
        worker_end.close()
        for fd in (next_r, next_w):
            os.close(fd)
