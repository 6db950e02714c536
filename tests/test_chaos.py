"""Chaos, CI-sized: the pool drains a queue while workers are killed and the API misbehaves.

The experiment itself lives in ``benchmarks/chaos.py`` (``make chaos`` runs the full one: 1,000
tasks); here it runs with 150 tasks and denser chaos, bounded well under a minute. Set
``CHAOS_SEED`` to replay another seed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys

import pytest

from boefje_runtime import RetryPolicy
from boefje_runtime.testing import make_task

from .helpers import IMAGE, ROOT, wait_until

CHAOS_PATH = ROOT / "benchmarks" / "chaos.py"
#: A client that gives up on a request within half a second and repeats it: a delayed PATCH lands late.
IMPATIENT = {"timeout": 0.5, "retry": RetryPolicy(attempts=5, total_seconds=10, initial_wait=0.05, max_wait=0.2)}


def _load_chaos():
    """benchmarks/ is not a package: load the experiment by path (once per process)."""
    name = "boefje_runtime_chaos_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CHAOS_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


chaos = _load_chaos()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_pool_survives_kills_outages_and_bad_answers(tmp_path, capsys):
    # Given a pool of 4 and 150 tasks, of which some fail on purpose
    settings = chaos.ChaosSettings(
        tasks=150,
        pool_size=4,
        seed=int(os.environ.get("CHAOS_SEED", "20240601")),
        work=(0.05, 0.25),
        kill_every=(0.3, 1.0),
        fault_pause=(0.2, 0.8),
        error_window=(0.5, 1.5),
        outage=(0.5, 1.5),
        late_patches=True,  # a kill during a delayed running PATCH: the finalizer's recheck closes it again
        chaos_budget=30.0,
        stall=10.0,
        settle_timeout=20.0,
        record_dir=str(tmp_path / "runs"),
    )

    # When workers are SIGKILLed and the API errs, drops, delays and restarts while they work
    report = chaos.run_chaos(settings)
    with capsys.disabled():
        print(f"\nchaos (seed {settings.seed}):\n{report.summary()}")

    # Then every task is closed exactly once, with an explanation when it failed
    assert report.ok, report.summary()
    assert report.completed + report.failed == settings.tasks
    assert report.lost == report.stuck == report.duplicates == 0
    assert report.failed_without_error_file == 0
    assert report.supervisor_alive and report.pool_full
    # and the chaos really happened (otherwise the verdict means nothing)
    assert report.kills >= 3, report.summary()
    assert report.restarts >= 1, report.summary()
    assert report.fault_hits >= 5, report.summary()
    assert report.failure_reasons["worker SIGKILLed"] >= 1, report.summary()
    assert report.failure_reasons["the boefje raised"] >= 1, report.summary()


@pytest.mark.timeout(60)
def test_a_late_running_patch_does_not_leave_a_closed_task_running(boefje_api, make_pool):
    """Found by the chaos run: the scheduler does not guard transitions, so a running PATCH the client
    gave up on (and repeated) that lands after the output reopened the task for good."""
    # Given a worker whose running PATCH is answered only after the client gave up on it
    make_pool(**IMPATIENT, pool_size=1, shutdown_timeout=2).start()
    boefje_api.inject("patch", delay=1.0, times=1)
    task_id = boefje_api.enqueue(make_task("hello", oci_image=IMAGE))

    # When the retried PATCH let the task run and close, and then the first one lands
    wait_until(lambda: "completed" in boefje_api.history(task_id), 10, "the task to complete")
    wait_until(lambda: sum(1 for r in boefje_api.request_log() if r.endpoint == "patch" and r.status) >= 2,
               10, "the late PATCH to be handled")

    # Then the runtime notices the reopening and closes the task again
    wait_until(lambda: boefje_api.history(task_id)[-2:] == ["running", "completed"]
               and boefje_api.history(task_id).count("completed") == 2, 10, "the task to be closed again")
    assert boefje_api.history(task_id)[-4:] == ["running", "completed", "running", "completed"]


@pytest.mark.timeout(60)
def test_a_running_patch_from_a_killed_worker_does_not_reopen_its_closed_task(boefje_api, make_pool):
    """Found by the chaos run (seed 4 of the CI settings)."""
    # Given a worker whose running PATCH the API holds for a second
    pool = make_pool(**IMPATIENT, pool_size=1, shutdown_timeout=2).start()
    wait_until(lambda: any(w.ready for w in list(pool.workers)), 10, "a ready worker")
    [worker] = pool.workers
    boefje_api.inject("patch", delay=1.0, times=1)
    task_id = boefje_api.enqueue(make_task("hello", oci_image=IMAGE))

    # When the worker is killed while that PATCH is in flight, and the pool closes its task
    wait_until(lambda: boefje_api.request_counts().get("patch", 0) >= 1, 10, "the PATCH to arrive")
    os.kill(worker.pid, signal.SIGKILL)
    wait_until(lambda: "failed" in boefje_api.history(task_id), 10, "the task to be failed")
    wait_until(lambda: sum(1 for r in boefje_api.request_log() if r.endpoint == "patch" and r.status) >= 2,
               10, "the late PATCH to be handled")

    # Then the task does not stay reopened
    wait_until(lambda: boefje_api.status(task_id) == "failed", 6, "the task to be closed again")
