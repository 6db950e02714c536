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
from collections.abc import Iterator

import pytest

from boefje_runtime import RetryPolicy
from boefje_runtime.testing import make_task

from .helpers import IMAGE, ROOT, GatedAPI, running_gated_api, wait_until

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
    assert report.completed + report.failed + report.lost_by_cut_pop_answer == settings.tasks
    assert report.lost == report.stuck == report.duplicates == 0
    assert report.failed_without_error_file == 0
    assert report.supervisor_alive and report.pool_full
    # and the chaos really happened (otherwise the verdict means nothing)
    assert report.kills >= 3, report.summary()
    assert report.restarts >= 1, report.summary()
    assert report.fault_hits >= 5, report.summary()
    assert report.failure_reasons["worker SIGKILLed"] >= 1, report.summary()
    assert report.failure_reasons["the boefje raised"] >= 1, report.summary()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_pool_survives_4xx_answers_and_throttling(tmp_path, capsys):
    # Given a pool of 4 and 100 tasks
    settings = chaos.ChaosSettings(
        tasks=100,
        pool_size=4,
        seed=int(os.environ.get("CHAOS_SEED", "20240601")),
        work=(0.05, 0.25),
        kill_every=(0.5, 1.5),
        fault_pause=(0.2, 0.6),
        error_window=(0.5, 1.5),
        outage=(0.5, 1.5),
        fault_kinds=("client-errors", "client-errors", "throttle", "restart"),
        chaos_budget=30.0,
        stall=10.0,
        settle_timeout=20.0,
        record_dir=str(tmp_path / "runs"),
    )

    # When, while workers are killed and the API restarts, PATCHes and outputs get 409/403/401/408
    # for tasks that are in fact running, and the API throttles with 429 and Retry-After
    report = chaos.run_chaos(settings)
    with capsys.disabled():
        print(f"\nchaos with 4xx and 429 (seed {settings.seed}):\n{report.summary()}")

    # Then no task is lost, left open or run twice at once
    assert report.ok, report.summary()
    assert report.lost == report.stuck == report.duplicates == 0
    assert report.completed + report.failed + report.lost_by_cut_pop_answer == settings.tasks
    # and the faults really happened
    assert report.fault_episodes["client-errors"] >= 2 and report.fault_episodes["throttle"] >= 1, report.summary()
    assert report.fault_hits >= 5 and report.kills >= 2, report.summary()


@pytest.fixture
def boefje_api() -> Iterator[GatedAPI]:
    """The test API with gates, for the two late-PATCH tests (``make_pool`` uses it too)."""
    with running_gated_api() as api:
        yield api


@pytest.mark.timeout(60)
def test_a_late_running_patch_does_not_leave_a_closed_task_running(boefje_api, make_pool):
    """Found by the chaos run: the scheduler does not guard transitions, so a running PATCH the client
    gave up on (and repeated) that lands after the output reopened the task for good."""
    # Given a worker whose first running PATCH the API holds (the client gives up on it after 0.5 s
    # and repeats it)
    make_pool(**IMPATIENT, pool_size=1, shutdown_timeout=2).start()
    late = make_task("hello", oci_image=IMAGE)
    gate = boefje_api.gate("patch", late["id"])
    task_id = boefje_api.enqueue(late)

    # When the repeated PATCH let the task run and close, and only then the first one lands
    boefje_api.wait_for_status(task_id, "completed", timeout=15)
    assert gate.arrived.is_set()
    gate.open()

    # Then the runtime notices the reopening and closes the task again
    wait_until(lambda: boefje_api.history(task_id).count("completed") == 2
               and boefje_api.status(task_id) == "completed", 15, "the task to be closed again")
    assert boefje_api.history(task_id)[-4:] == ["running", "completed", "running", "completed"]


@pytest.mark.timeout(60)
def test_a_running_patch_from_a_killed_worker_does_not_reopen_its_closed_task(boefje_api, make_pool):
    """Found by the chaos run (seed 4 of the CI settings)."""
    # Given a worker whose running PATCH the API holds
    pool = make_pool(**IMPATIENT, pool_size=1, shutdown_timeout=2).start()
    wait_until(lambda: any(w.ready for w in list(pool.workers)), 10, "a ready worker")
    [worker] = pool.workers
    late = make_task("hello", oci_image=IMAGE)
    gate = boefje_api.gate("patch", late["id"], times=None)
    task_id = boefje_api.enqueue(late)

    # When the worker is killed while that PATCH is held, and the pool closes its task
    assert gate.arrived.wait(15), "the running PATCH never arrived"
    gate.let_through()  # the supervisor's own requests for the task go through
    os.kill(worker.pid, signal.SIGKILL)
    boefje_api.wait_for_status(task_id, "failed", timeout=15)
    # and only then the dead worker's PATCH lands, reopening the task
    gate.open()

    # Then the task does not stay reopened
    wait_until(lambda: boefje_api.history(task_id)[-3:] == ["failed", "running", "failed"], 15,
               "the task to be closed again")
