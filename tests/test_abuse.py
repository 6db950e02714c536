"""A boefje abusing its worker's resources: the pool survives, the task ends with a defined status and
an ``error/boefje`` file where it failed, and the next task runs normally.

Each test runs a real pool (``pool_size=1`` where the next task must run in the same process) against
the test Boefje API. The misbehaving boefjes are in ``tests/abuse_boefjes.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from pathlib import Path

import pytest

from boefje_runtime.pool import WorkerPool

from . import abuse_boefjes
from .helpers import alive, error_text, ready_workers, task, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def pool_options():
    """One worker (so the next task runs in the process the abuse happened in), polling fast."""
    return {"registry": abuse_boefjes.registry(), "pool_size": 1, "poll_interval": 0.1}


def then_the_next_task_runs_normally(boefje_api, pool: WorkerPool, size: int = 1) -> None:
    wait_until(lambda: ready_workers(pool) == size, what="the pool at full size")
    follow_up = boefje_api.enqueue(task())
    boefje_api.wait_for_status(follow_up, "completed", timeout=15)
    assert boefje_api.files(follow_up)[0]["content"].startswith(b"hi ")
    assert pool.phase == "running"


# -- memory -----------------------------------------------------------------------------------------


def test_unbounded_memory_fails_the_task_and_the_worker_lives_on(boefje_api, make_pool):
    # Given a boefje that caps its own worker's address space and then allocates without end
    pool = make_pool().start()
    wait_until(lambda: ready_workers(pool) == 1, what="a ready worker")
    worker_pid = pool.workers[0].pid
    bomb = boefje_api.enqueue(task("memory-bomb", arguments={"headroom_mib": 256}))

    # When it runs out of memory
    boefje_api.wait_for_status(bomb, "failed", timeout=30)

    # Then its task failed with the MemoryError, and the same worker runs the next task
    assert "MemoryError" in error_text(boefje_api, bomb)
    then_the_next_task_runs_normally(boefje_api, pool)
    assert [worker.pid for worker in pool.workers] == [worker_pid], "the worker survived"


# -- stdout -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_into_pipe(monkeypatch, *, drained: bool):
    """Point sys.stdout (inherited by workers forked inside the block) at a pipe, drained and
    counted by a thread, or (``drained=False``) never read, like a stalled log collector."""
    read_fd, write_fd = os.pipe()
    received = [0]

    def drain() -> None:  # until every write end is closed: ours below, the workers' when they exit
        try:
            while chunk := os.read(read_fd, 1 << 20):
                received[0] += len(chunk)
        finally:
            os.close(read_fd)

    reader = threading.Thread(target=drain, daemon=True) if drained else None
    if reader:
        reader.start()
    stream = open(write_fd, "w", buffering=1 << 20, closefd=True)  # noqa: SIM115 - closed below
    monkeypatch.setattr(sys, "stdout", stream)
    try:
        yield received
    finally:
        monkeypatch.undo()
        stream.close()
        if not drained:
            os.close(read_fd)


def test_100_mb_on_stdout_is_passed_through_and_the_task_completes(boefje_api, make_pool, monkeypatch):
    with stdout_into_pipe(monkeypatch, drained=True) as received:
        # Given a boefje that prints 100 MiB
        pool = make_pool().start()
        flood = boefje_api.enqueue(task("stdout-flood", arguments={"mib": 100}))

        # When it runs
        boefje_api.wait_for_status(flood, "completed", timeout=60)

        # Then all of it went to the worker's stdout, untouched, and the task completed as usual
        wait_until(lambda: received[0] >= 100 * abuse_boefjes.MIB, what="100 MiB on stdout")
        assert boefje_api.files(flood)[0]["content"] == b"flooded"
        then_the_next_task_runs_normally(boefje_api, pool)


def test_a_stalled_stdout_blocks_the_boefje_until_the_task_timeout(boefje_api, make_pool, monkeypatch):
    with stdout_into_pipe(monkeypatch, drained=False):
        # Given stdout nobody reads (a pipe fills at 64 KiB) and a task timeout
        pool = make_pool(task_timeout=1.5).start()
        flood = boefje_api.enqueue(task("stdout-flood", arguments={"mib": 100}))

        # When the boefje blocks writing to it
        boefje_api.wait_for_status(flood, "failed", timeout=30)

        # Then the timeout ends the task, and a fresh worker takes the next one
        assert "timed out after 1.5 s" in error_text(boefje_api, flood)
        then_the_next_task_runs_normally(boefje_api, pool)


# -- child processes --------------------------------------------------------------------------------


def forked_task(tmp_path: Path, then: str) -> tuple[dict, Path]:
    pid_file = tmp_path / f"forked-{then}.json"
    return task("fork-and-leave", arguments={"pid_file": str(pid_file), "then": then, "lifetime": 60}), pid_file


def test_a_boefje_that_forks_children_and_returns(boefje_api, make_pool, tmp_path, strays):
    # Given a boefje that starts two forked children and a `sleep` process, and returns
    pool = make_pool().start()
    forked, pid_file = forked_task(tmp_path, "return")
    task_id = boefje_api.enqueue(forked)

    # When its task is done
    boefje_api.wait_for_status(task_id, "completed")
    children = json.loads(pid_file.read_text())["children"]
    strays.extend(children)

    # Then the children end with the task (the worker is their subreaper), and the pool goes on
    assert boefje_api.files(task_id)[0]["content"] == b"forked"
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=3, what="the children to be gone")
    then_the_next_task_runs_normally(boefje_api, pool)


def test_a_boefje_that_forks_children_and_exits_its_worker(boefje_api, make_pool, tmp_path, strays):
    # Given a boefje that starts children and then ends its worker process
    pool = make_pool().start()
    forked, pid_file = forked_task(tmp_path, "exit")
    task_id = boefje_api.enqueue(forked)

    # When the worker is gone
    boefje_api.wait_for_status(task_id, "failed")
    record = json.loads(pid_file.read_text())
    strays.extend(record["children"])

    # Then its task failed saying how, a new worker took over, and the next task runs
    assert "exited with code 3" in error_text(boefje_api, task_id)
    then_the_next_task_runs_normally(boefje_api, pool)
    assert record["worker"] not in [worker.pid for worker in pool.workers]


# -- SIGTERM ----------------------------------------------------------------------------------------
#
# What a boefje experiences: at the drain's deadline its worker's process group gets SIGTERM (a
# scanner it runs may stop cleanly and the boefje may still deliver), and TERM_BOUND seconds later
# the whole tree gets SIGKILL. A task timeout is SIGKILL of the whole tree at once. Ignoring SIGTERM
# buys nothing but those seconds.


def scanner_task(tmp_path: Path, on_term: str, **arguments) -> tuple[dict, Path, Path]:
    pid_file, marker = tmp_path / f"scanner-{on_term}.json", tmp_path / f"scanner-{on_term}.marker"
    scan = task("run-scanner", arguments={"pid_file": str(pid_file), "marker": str(marker), "on_term": on_term,
                                         **arguments})
    return scan, pid_file, marker


def test_a_boefje_ignoring_sigterm_is_killed_with_its_scanner_at_the_task_timeout(boefje_api, make_pool, tmp_path):
    # Given a boefje that ignores SIGTERM and runs a scanner that ignores it too, under a 1.5 s timeout
    pool = make_pool(task_timeout=1.5).start()
    scan, pid_file, marker = scanner_task(tmp_path, "ignore", ignore_sigterm=True)
    task_id = boefje_api.enqueue(scan)
    wait_until(pid_file.exists, what="the scanner to start")
    pids = json.loads(pid_file.read_text())

    # When the timeout passes
    boefje_api.wait_for_status(task_id, "failed", timeout=15)

    # Then both are gone at once (SIGKILL of the whole tree: nothing to ignore, no SIGTERM first)
    assert "timed out after 1.5 s" in error_text(boefje_api, task_id)
    wait_until(lambda: not alive(pids["worker"]) and not alive(pids["children"][0]), what="both to be gone")
    assert "SIGTERM" not in marker.read_text()
    then_the_next_task_runs_normally(boefje_api, pool)


def test_at_the_drain_deadline_a_scanner_ignoring_sigterm_gets_sigterm_then_sigkill(boefje_api, make_pool,
                                                                                     tmp_path):
    # Given a boefje whose scanner ignores SIGTERM (and records that it got one), running at shutdown
    pool = make_pool(shutdown_timeout=0.5).start()
    scan, pid_file, marker = scanner_task(tmp_path, "ignore")
    task_id = boefje_api.enqueue(scan)
    wait_until(pid_file.exists, what="the scanner to start")
    pids = json.loads(pid_file.read_text())

    # When the pool stops and the grace period passes
    assert pool.stop(timeout=30) == 0

    # Then the scanner was asked to stop (SIGTERM), ignored it, and was killed anyway; the task says why
    assert marker.read_text() == "SIGTERM\n"
    assert not alive(pids["children"][0]) and not alive(pids["worker"])
    assert "shut down before this task finished" in error_text(boefje_api, task_id)


def test_at_the_drain_deadline_a_scanner_that_stops_on_sigterm_lets_its_boefje_deliver(boefje_api, make_pool,
                                                                                       tmp_path):
    # Given a boefje whose scanner stops cleanly on SIGTERM, running at shutdown
    pool = make_pool(shutdown_timeout=0.5).start()
    scan, pid_file, marker = scanner_task(tmp_path, "exit")
    task_id = boefje_api.enqueue(scan)
    wait_until(pid_file.exists, what="the scanner to start")

    # When the pool stops and the grace period passes
    assert pool.stop(timeout=30) == 0

    # Then the scanner stopped on SIGTERM and the boefje delivered what it had: the task completed
    assert marker.read_text() == "SIGTERM\n"
    assert boefje_api.status(task_id) == "completed"
    assert boefje_api.files(task_id)[0]["content"] == b"scanner ended with 0"


# -- output size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", [{"mib": 50}, {"pieces": 50}], ids=["one-50-MiB-file", "fifty-1-MiB-files"])
def test_output_over_max_output_bytes_fails_with_a_clear_message(boefje_api, make_pool, arguments):
    # Given a pool that accepts at most 1 MiB of output per task
    pool = make_pool(max_output_bytes=abuse_boefjes.MIB).start()
    big = boefje_api.enqueue(task("big-output", arguments=arguments))

    # When a boefje returns 50 MiB
    boefje_api.wait_for_status(big, "failed", timeout=30)

    # Then the task failed with a message that names the limit, and no output file was posted
    message = error_text(boefje_api, big)
    assert message.startswith("boefje output too large: at least ")
    assert "over the limit of 1048576 bytes (max_output_bytes)" in message
    assert len(boefje_api.files(big)) == 1
    then_the_next_task_runs_normally(boefje_api, pool)
