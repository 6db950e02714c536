"""WorkerPool against the real test Boefje API, with real worker processes and real signals.

The pool runs in a background thread of the test process (``start``/``stop``), or in the
foreground in burst mode (``run``). Every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from boefje_runtime.plugins import BoefjeRegistry
from boefje_runtime.pool import WorkerPool

from . import pool_boefjes
from .helpers import FAST_RETRY, IMAGE, error_text, hold_task, ready_workers, task, wait_until, write_plugin


@pytest.mark.parametrize("pool_size", [1, 2])
def test_workers_drain_the_queue_and_report_failures(boefje_api, make_pool, pool_size):
    good = boefje_api.enqueue([task() for _ in range(10)])
    bad = boefje_api.enqueue(task("boom"))

    exit_code = make_pool(pool_size=pool_size, burst=True).run()

    assert exit_code == 0
    for task_id in good:
        assert boefje_api.history(task_id) == ["queued", "dispatched", "running", "completed"]
        [file] = boefje_api.files(task_id)
        assert file["content"].startswith(b"hi ")
        assert set(file["tags"]) == {"text/plain", "boefje/hello"}
    assert boefje_api.history(bad) == ["queued", "dispatched", "running", "failed"]
    assert "RuntimeError: boom went the boefje" in error_text(boefje_api, bad)
    counts = boefje_api.request_counts()
    assert counts.get("get", 0) == 0, "no GET after each task"
    assert counts["patch"] == counts["output"] == 11


def test_an_exception_in_one_worker_does_not_disturb_the_other(boefje_api, make_pool, tmp_path):
    held, pid_file, release = hold_task(tmp_path, "slow")
    make_pool(pool_size=2).start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")
    bad = boefje_api.enqueue(task("boom"))

    boefje_api.wait_for_status(bad, "failed")
    assert boefje_api.status(held_id) == "running"
    release.touch()
    boefje_api.wait_for_status(held_id, "completed")


def test_a_killed_worker_fails_its_task_and_is_replaced(boefje_api, make_pool, tmp_path):
    held, pid_file, _ = hold_task(tmp_path, "victim")
    pool = make_pool(pool_size=2).start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")

    os.kill(int(pid_file.read_text()), signal.SIGKILL)

    boefje_api.wait_for_status(held_id, "failed")
    assert "SIGKILL" in error_text(boefje_api, held_id)
    wait_until(lambda: ready_workers(pool) == 2, what="the pool to be back at full size")
    follow_up = boefje_api.enqueue(task())
    boefje_api.wait_for_status(follow_up, "completed")


def test_a_worker_that_exits_hard_fails_its_task_with_the_exit_code(boefje_api, make_pool):
    registry = pool_boefjes.registry()
    registry.register("exit-hard", lambda meta: os._exit(7), oci_image=IMAGE)
    make_pool(registry=registry, pool_size=1).start()
    task_id = boefje_api.enqueue(task("exit-hard"))

    boefje_api.wait_for_status(task_id, "failed")
    assert b"exited with code 7" in boefje_api.files(task_id)[0]["content"]


def test_a_task_over_its_timeout_fails_and_its_process_is_replaced(boefje_api, make_pool, tmp_path):
    held, _pid_file, _ = hold_task(tmp_path, "sloth")
    pool = make_pool(pool_size=1, task_timeout=0.5).start()
    held_id = boefje_api.enqueue(held)

    boefje_api.wait_for_status(held_id, "failed")
    assert b"timed out after 0.5 s" in boefje_api.files(held_id)[0]["content"]
    wait_until(lambda: ready_workers(pool) == 1, what="a replacement worker")
    follow_up = boefje_api.enqueue(task())
    boefje_api.wait_for_status(follow_up, "completed")


def test_the_task_timeout_holds_though_no_message_wakes_the_supervisor(boefje_api, make_pool, tmp_path):
    """The boefje's start is only marked on the worker's progress page, which wakes nobody: the
    supervisor must read it by the time the timeout could pass, not at its next heartbeat (30 s
    here) nor at the end of the start's own bound (ASSIGNED: one call's bound + 5 s); and the mark
    of the task before must not pass for this one's."""
    held, pid_file, _ = hold_task(tmp_path, "sloth")
    make_pool(pool_size=1, task_timeout=1.0, heartbeat=30.0).start()
    # a task before it, so the page still shows that task's end when the held one is handed out
    boefje_api.wait_for_status(boefje_api.enqueue(task()), "completed")
    boefje_api.inject("patch", delay=1.5)  # the page is read (at the 1 s look) before the boefje starts
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, timeout=20, what="the boefje to start")
    started = time.monotonic()

    boefje_api.wait_for_status(held_id, "failed", timeout=20)

    assert time.monotonic() - started < 3.0
    assert b"timed out after 1 s" in boefje_api.files(held_id)[0]["content"]


def test_a_pop_answer_wakes_the_loop_when_a_worker_is_free(boefje_api, make_pool):
    """With a 30 s heartbeat nothing else wakes an idle pool: the answer of its pop must (its idle
    worker could take the task), or the task would wait for the heartbeat."""
    pool = make_pool(pool_size=1, heartbeat=30.0).start()
    wait_until(lambda: ready_workers(pool) == 1, timeout=20, what="the worker to come up")
    task_id = boefje_api.enqueue(task())

    boefje_api.wait_for_status(task_id, "completed", timeout=10)


def test_workers_are_recycled_after_max_tasks(boefje_api, make_pool, caplog):
    caplog.set_level(logging.INFO, logger="boefje_runtime")
    ids = boefje_api.enqueue([task() for _ in range(5)])
    pool = make_pool(pool_size=1, max_tasks_per_child=2, burst=True)

    assert pool.run() == 0

    assert all(boefje_api.status(task_id) == "completed" for task_id in ids)
    assert pool.stats.worker_exits["recycled"] >= 2
    assert "max tasks per child reached" in caplog.text


def test_workers_are_recycled_past_their_memory_cap(boefje_api, make_pool, caplog):
    caplog.set_level(logging.INFO, logger="boefje_runtime")
    from boefje_runtime.pool.limits import resident_mib

    hog = boefje_api.enqueue(task("memory-hog", arguments={"mib": 80}))
    after = boefje_api.enqueue(task())
    pool = make_pool(pool_size=1, max_memory_per_child=resident_mib() + 40, burst=True)

    assert pool.run() == 0

    assert boefje_api.status(hog) == boefje_api.status(after) == "completed"
    assert pool.stats.worker_exits["recycled"] >= 1
    assert "max memory per child passed" in caplog.text


def test_burst_mode_exits_cleanly_on_an_empty_queue(make_pool):
    started = time.monotonic()
    assert make_pool(burst=True).run() == 0
    assert time.monotonic() - started < 10


def test_max_tasks_stops_after_that_many_tasks(boefje_api, make_pool):
    ids = boefje_api.enqueue([task() for _ in range(6)])
    assert make_pool(pool_size=1, max_tasks=4).run() == 0
    statuses = [boefje_api.status(task_id) for task_id in ids]
    assert statuses.count("completed") == 4
    assert statuses.count("queued") == 2


def _wait_all_ready(pool: WorkerPool, size: int) -> None:
    wait_until(lambda: ready_workers(pool) == size, what=f"{size} ready workers")


@pytest.mark.boefje_api(pop_mode="dedup")
def test_duplicates_run_once_and_all_get_the_output(boefje_api, make_pool, tmp_path):
    counter = tmp_path / "runs"
    pool = make_pool(pool_size=3).start()
    _wait_all_ready(pool, 3)
    registry_counter_task = {"count_file": str(counter)}
    ids = boefje_api.enqueue(
        [task("count", input_ooi="Hostname|internet|same", arguments=registry_counter_task,
              deduplication_key="k1") for _ in range(3)]
    )

    boefje_api.wait_for_status(ids, "completed")
    assert counter.read_text().count("run") == 1
    contents = {boefje_api.files(task_id)[0]["content"] for task_id in ids}
    assert len(contents) == 1
    for task_id in ids:
        assert boefje_api.history(task_id)[-2:] == ["running", "completed"]


@pytest.mark.boefje_api(pop_mode="dedup")
def test_deduplication_off_runs_every_task(boefje_api, make_pool, tmp_path):
    counter = tmp_path / "runs"
    pool = make_pool(pool_size=3, deduplicate=False).start()
    _wait_all_ready(pool, 3)
    ids = boefje_api.enqueue(
        [task("count", input_ooi="Hostname|internet|same", arguments={"count_file": str(counter)},
              deduplication_key="k1") for _ in range(3)]
    )

    boefje_api.wait_for_status(ids, "completed")
    assert counter.read_text().count("run") == 3


@pytest.mark.boefje_api(pop_mode="dedup")
def test_failed_duplicates_go_back_to_the_queue_for_their_own_run(boefje_api, make_pool):
    pool = make_pool(pool_size=3).start()
    _wait_all_ready(pool, 3)
    ids = boefje_api.enqueue([task("boom", input_ooi="Hostname|internet|same", deduplication_key="k2")
                              for _ in range(3)])

    boefje_api.wait_for_status(ids, "failed")
    requeued = [task_id for task_id in ids if boefje_api.history(task_id).count("queued") > 1]
    assert requeued, "a duplicate of a failed task goes back to queued"
    for task_id in ids:
        assert "boom went the boefje" in error_text(boefje_api, task_id)


def test_the_pool_recovers_when_the_api_is_down_for_seconds(boefje_api, make_pool):
    pool = make_pool(pool_size=2, max_error_backoff=1.0).start()
    _wait_all_ready(pool, 2)
    boefje_api.stop()
    ids = boefje_api.enqueue([task() for _ in range(20)])
    # The outage lasts until the pool has felt it: three failed pops, so its error back-off grew
    # (a count of the pool's own attempts, not seconds that a loaded machine may or may not fill)
    failed_before = pool.stats.api_errors["pop"]
    wait_until(lambda: pool.stats.api_errors["pop"] >= failed_before + 3, timeout=30, what="three failed pops")
    boefje_api.start()

    boefje_api.wait_for_status(ids, "completed", timeout=30)
    assert all(boefje_api.history(task_id).count("dispatched") == 1 for task_id in ids)


def test_the_pool_rides_out_5xx_and_dropped_connections(boefje_api, make_pool):
    ids = boefje_api.enqueue([task() for _ in range(10)])
    boefje_api.inject("pop", status=503, times=3)
    boefje_api.inject("patch", status=500, times=2)
    boefje_api.inject("output", drop=True, times=2)
    boefje_api.inject("output", status=502, times=1)

    assert make_pool(pool_size=2, burst=True, max_error_backoff=0.5).run() == 0

    assert [boefje_api.status(task_id) for task_id in ids] == ["completed"] * 10


def test_a_malformed_pop_answer_is_logged_and_survived(boefje_api, make_pool, caplog):
    ids = boefje_api.enqueue([task() for _ in range(3)])
    boefje_api.inject("pop", malformed=True, times=2)

    assert make_pool(pool_size=1, burst=True, max_error_backoff=0.2).run() == 0

    assert [boefje_api.status(task_id) for task_id in ids] == ["completed"] * 3
    assert "Could not pop tasks" in caplog.text


def test_a_malformed_task_with_an_id_is_marked_failed(boefje_api, make_pool, caplog):
    victim = boefje_api.enqueue(task())
    boefje_api.inject("pop", body=f'[{{"id": "{victim}", "data": 5}}]')

    assert make_pool(pool_size=1, burst=True).run() == 0

    assert boefje_api.status(victim) == "failed"
    assert "pop[0].data: expected an object, got number 5" in caplog.text
    assert "the task could not be read: pop[0].data" in error_text(boefje_api, victim)


def test_stop_drains_running_tasks_within_the_grace_period(boefje_api, make_pool, tmp_path):
    held, pid_file, release = hold_task(tmp_path, "drained")
    pool = make_pool(pool_size=1).start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")

    pool.request_shutdown()
    wait_until(lambda: pool.phase == "draining", what="draining")
    release.touch()
    assert pool.stop(timeout=20) == 0

    assert boefje_api.status(held_id) == "completed"
    assert pool.phase == "stopped"


def test_running_tasks_past_the_grace_period_are_killed_and_failed(boefje_api, make_pool, tmp_path):
    held, pid_file, _ = hold_task(tmp_path, "stubborn")
    pool = make_pool(pool_size=1, shutdown_timeout=0.5).start()
    held_id = boefje_api.enqueue(held)
    wait_until(pid_file.exists, what="the held task to start")

    assert pool.stop(timeout=20) == 0

    assert boefje_api.status(held_id) == "failed"
    assert b"shut down before this task finished" in boefje_api.files(held_id)[0]["content"]


def test_an_undeliverable_output_fails_the_task_with_an_error_file_saying_why(boefje_api, make_pool):
    task_id = boefje_api.enqueue(task())
    boefje_api.inject("output", status=500, times=FAST_RETRY.attempts)  # every try of the worker

    assert make_pool(pool_size=1, burst=True).run() == 0

    assert boefje_api.status(task_id) == "failed"
    [error] = boefje_api.files(task_id)
    assert "error/boefje" in error["tags"]
    assert b"output could not be delivered" in error["content"]
    assert b"500" in error["content"]


# -- edges of the lifecycle ---------------------------------------------------------------------------


HANGING_IMPORT = "import time\ntime.sleep(60)\n\ndef run(boefje_meta):\n    return []\n"


def test_a_worker_stuck_in_its_import_is_killed_at_the_startup_timeout(make_pool, tmp_path, caplog):
    # Given a boefje whose import hangs, and a 1 s start-up timeout
    write_plugin(tmp_path / "plugins" / "hanger", HANGING_IMPORT, id="hanger", oci_image=IMAGE)
    pool = make_pool(registry=BoefjeRegistry.discover(tmp_path / "plugins"), pool_size=1, startup_timeout=1.0)
    pool.start()

    # When it never says ready
    wait_until(lambda: pool.stats.worker_exits["killed"] >= 1, timeout=10, what="the stuck worker to be killed")

    # Then it was killed as a start-up failure (the guard paces the next start), and the pool stops in time
    assert "did not become ready within 1 s" in caplog.text
    started = time.monotonic()
    assert pool.stop(timeout=20) == 0
    assert time.monotonic() - started < 10


def test_shutdown_does_not_wait_for_a_start_up_that_never_ends(make_pool, tmp_path):
    write_plugin(tmp_path / "plugins" / "hanger", HANGING_IMPORT, id="hanger", oci_image=IMAGE)
    pool = make_pool(registry=BoefjeRegistry.discover(tmp_path / "plugins"), pool_size=2, shutdown_timeout=1.0)
    pool.start()
    wait_until(lambda: len(pool.workers) == 2, what="two workers starting")

    started = time.monotonic()
    assert pool.stop(timeout=20) == 0

    assert time.monotonic() - started < 1.0 + 8, "grace period plus a fixed bound"
    assert not pool.workers


def test_stop_reports_a_loop_that_does_not_end(make_pool):
    import threading

    from boefje_runtime.pool import PoolEvents

    release = threading.Event()

    class Stuck(PoolEvents):
        def loop_turned(self, now: float) -> None:
            if stuck.is_set():
                release.wait(30)

    stuck = threading.Event()
    pool = make_pool(pool_size=1)
    pool.listeners.append(Stuck())
    pool.start()
    wait_until(lambda: ready_workers(pool) == 1, what="a ready worker")
    stuck.set()

    with pytest.raises(TimeoutError, match=r"did not stop within 0\.5 s"):
        pool.stop(timeout=0.5)
    release.set()
    stuck.clear()
    assert pool.stop(timeout=20) == 0


def test_a_listener_that_raises_does_not_stop_the_pool(boefje_api, make_pool, caplog):
    from boefje_runtime.pool import PoolEvents

    class Broken(PoolEvents):
        def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None:
            raise RuntimeError("the exporter is broken")

    pool = make_pool(pool_size=1)
    pool.listeners.append(Broken())
    pool.start()
    ids = boefje_api.enqueue([task() for _ in range(2)])

    boefje_api.wait_for_status(ids, "completed")
    assert "the exporter is broken" in caplog.text
    assert pool.phase == "running"


def test_a_worker_that_reports_another_task_is_replaced_and_its_task_failed(boefje_api, make_pool):
    # Given a boefje that makes its worker report some other task as done, then goes on running
    registry = pool_boefjes.registry()

    def lie(meta: dict) -> list:
        import gc
        import stat
        from multiprocessing.connection import Connection

        from boefje_runtime.pool.exits import TaskExit
        from boefje_runtime.pool.worker import Report

        # its own pipe: the other Connection objects it inherited point at /dev/null (parked sockets)
        [conn] = [obj for obj in gc.get_objects() if isinstance(obj, Connection) and not obj.closed
                  and stat.S_ISSOCK(os.fstat(obj.fileno()).st_mode)]
        conn.send(("done", "not-the-task-it-was-given", Report(TaskExit.COMPLETED), 0.0, None))
        time.sleep(30)
        return []

    registry.register("liar", lie, oci_image=IMAGE)
    pool = make_pool(registry=registry, pool_size=1).start()
    task_id = boefje_api.enqueue(task("liar"))

    # When the supervisor reads that
    boefje_api.wait_for_status(task_id, "failed", timeout=15)

    # Then the task it really held is failed saying why, and a fresh worker runs the next task
    assert "broke the supervisor's protocol" in error_text(boefje_api, task_id)
    follow_up = boefje_api.enqueue(task())
    boefje_api.wait_for_status(follow_up, "completed", timeout=15)
    assert pool.stats.worker_exits["broken"] == 1
