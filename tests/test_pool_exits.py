"""Every answer the API can give to each call of a task's life ends with the task closed or queued.

One table: each call a task's life makes (the worker's PATCH running and output POST, the
finalizer's PATCH failed, the drain's push, the late-PATCH recheck's GET) x each status the API may
answer (and a dropped connection), injected into the test Boefje API, and the status the task must
end in. Only a 404 (the API says the task is gone) leaves a task where it was: nothing is left to do.
Real pool, real worker processes (docs/task-exits.md is the same table for operators).
"""

from __future__ import annotations

import pytest

from boefje_runtime import RetryPolicy
from boefje_runtime.pool import WorkerPool
from boefje_runtime.pool.finalizer import REFUSALS_BEFORE_FALLBACK
from boefje_runtime.retry import NOT_PROCESSED
from boefje_runtime.testing.faults import Fault

from .helpers import hold_task, task, wait_until

#: "limit": a scheduler that honours the pop limit, so a prefetched task waits in the pool (the push row).
pytestmark = [pytest.mark.timeout(60), pytest.mark.boefje_api(pop_mode="limit")]

#: Few, fast tries: an injected fault uses up the worker's tries quickly.
RETRY = RetryPolicy(attempts=3, total_seconds=5.0, initial_wait=0.02, max_wait=0.1)
FAULTS = [400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, "drop"]
GONE = 404


def retryable(fault) -> bool:
    return fault == "drop" or fault in NOT_PROCESSED or fault >= 500


def inject(api, endpoint: str, fault, times: int) -> Fault:
    if fault == "drop":
        return api.inject(endpoint, drop=True, times=times)
    return api.inject(endpoint, status=fault, times=times)


@pytest.fixture
def pool_options():
    return {"retry": RETRY, "timeout": 0.5, "pool_size": 1, "poll_interval": 0.1, "shutdown_timeout": 2.0}


def patch_running(api, make_pool, tmp_path, fault) -> tuple[WorkerPool, str, str, Fault]:
    """The worker's PATCH running gets ``fault`` on every try it makes."""
    task_id = api.enqueue(task())
    injected = inject(api, "patch", fault, RETRY.attempts if retryable(fault) else 1)
    return make_pool().start(), task_id, "dispatched" if fault == GONE else "failed", injected


def post_output(api, make_pool, tmp_path, fault) -> tuple[WorkerPool, str, str, Fault]:
    """The worker's output POST gets ``fault`` on every try it makes."""
    task_id = api.enqueue(task())
    injected = inject(api, "output", fault, RETRY.attempts if retryable(fault) else 1)
    return make_pool().start(), task_id, "running" if fault == GONE else "failed", injected


def killed_running_task(api, make_pool, tmp_path) -> tuple[WorkerPool, str]:
    """A task whose boefje runs; the pool will kill it at its 1 s timeout and close it itself."""
    held, pid_file, _ = hold_task(tmp_path, "held")
    task_id = api.enqueue(held)
    pool = make_pool(task_timeout=1.0).start()
    wait_until(pid_file.exists, what="the boefje to run")
    return pool, task_id


def patch_failed(api, make_pool, tmp_path, fault) -> tuple[WorkerPool, str, str, Fault]:
    """After a timeout kill the error file is refused (422), so the finalizer PATCHes failed: that
    PATCH gets ``fault`` (twice: the supervisor's client tries twice)."""
    pool, task_id = killed_running_task(api, make_pool, tmp_path)
    api.inject("output", status=422, times=REFUSALS_BEFORE_FALLBACK)  # refused for good, as far as it knows
    injected = inject(api, "patch", fault, 2)
    return pool, task_id, "running" if fault == GONE else "failed", injected


def push(api, make_pool, tmp_path, fault) -> tuple[WorkerPool, str, str, Fault]:
    """A prefetched task is pushed back at shutdown; the push gets ``fault`` (twice)."""
    api.pop_mode = "limit"  # prefetch holds an unrelated task only where the scheduler honours the limit
    running, pid_file, release = hold_task(tmp_path, "running")
    api.enqueue(running)
    waiting = api.enqueue(task())
    pool = make_pool(prefetch=1).start()
    wait_until(pid_file.exists, what="the first task to run")
    wait_until(lambda: api.status(waiting) == "dispatched", what="the second task to be held")
    injected = inject(api, "push", fault, 2)
    pool.request_shutdown()
    release.touch()
    return pool, waiting, "dispatched" if fault == GONE else "queued", injected


def recheck(api, make_pool, tmp_path, fault) -> tuple[WorkerPool, str, str, Fault]:
    """A task the pool closed is reopened by a late running PATCH; the recheck's GET gets ``fault``."""
    pool, task_id = killed_running_task(api, make_pool, tmp_path)
    api.wait_for_status(task_id, "failed", timeout=15)
    api.set_status(task_id, "running")  # as a worker's PATCH that lands late would
    injected = inject(api, "get", fault, 2)
    return pool, task_id, "running" if fault == GONE else "failed", injected


CALLS = {
    "PATCH running": patch_running,
    "POST output": post_output,
    "PATCH failed": patch_failed,
    "push": push,
    "recheck GET": recheck,
}
#: The table: (call, fault) -> the status the task ends in.
TABLE = [(call, fault) for call in CALLS for fault in FAULTS]


@pytest.mark.parametrize(("call", "fault"), TABLE, ids=[f"{call}-{fault}" for call, fault in TABLE])
def test_every_answer_to_every_call_ends_with_the_task_closed_or_queued(boefje_api, make_pool, tmp_path,
                                                                         call, fault):
    # Given a task whose `call` gets `fault` from the API
    pool, task_id, expected, injected = CALLS[call](boefje_api, make_pool, tmp_path, fault)

    # When the pool has made that call and dealt with the answer
    wait_until(lambda: injected.hits >= 1, timeout=30, what=f"the pool to make the call {call}")
    wait_until(lambda: boefje_api.status(task_id) == expected, timeout=30,
               what=f"the task to be {expected} (history {boefje_api.history(task_id)})")

    # Then it is in its final status (or queued); after a 404 nothing more was tried on it
    if expected == "failed" and call in ("PATCH running", "POST output"):
        assert "error/boefje" in boefje_api.files(task_id)[-1]["tags"], "the error file says why"
    if fault == GONE:
        history = boefje_api.history(task_id)
        pool.stop(timeout=20)  # whatever the pool still had to do, it has done now
        assert boefje_api.history(task_id) == history
