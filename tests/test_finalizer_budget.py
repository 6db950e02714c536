"""The finalizer's step budget, counted in calls: with a slow Boefje API, one loop step starts calls
only within :data:`STEP_BUDGET`, so it overruns the budget by one call at most (docs/task-exits.md,
"What the loop spends on this").

Driven directly: a real :class:`Finalizer` with a real client against the test Boefje API, whose
every answer is delayed by an injected fault. The test counts the requests each :meth:`Finalizer.run`
makes; a call can only take longer than its injected delay (never shorter), so the bound holds
however loaded the machine is.
"""

from __future__ import annotations

import math

import pytest

from boefje_runtime import RetryPolicy
from boefje_runtime.client import BoefjeAPIClient
from boefje_runtime.pool.exits import TaskExit, Ticket
from boefje_runtime.pool.finalizer import STEP_BUDGET, Finalizer

from .helpers import task

pytestmark = pytest.mark.timeout(60)

#: Each answer of the API takes at least this long: less than the budget, so a step may start a
#: second call inside it, and that second call is the one that may end after the budget.
DELAY = 0.15
#: Calls started while the step is within its budget, plus the one that may overrun it.
MOST_CALLS_PER_STEP = math.floor(STEP_BUDGET / DELAY) + 1


def total_requests(api) -> int:
    return sum(api.request_counts().values())


def test_a_step_with_a_slow_api_overruns_its_budget_by_one_call_at_most(boefje_api):
    # given: three tasks to push back and three dispatched tasks whose worker died (3 calls each)
    pushed = [boefje_api.enqueue(task()) for _ in range(3)]
    lost = [boefje_api.enqueue(task()) for _ in range(3)]
    for task_id in lost:
        boefje_api.set_status(task_id, "dispatched")
    client = BoefjeAPIClient(boefje_api.url, timeout=5.0, retry=RetryPolicy(attempts=1))
    finalizer = Finalizer(client)
    for task_id in pushed:
        finalizer.settle(Ticket(task_id, "hello", raw=boefje_api.task(task_id)), TaskExit.PUSHED_BACK, now=0.0)
    for task_id in lost:
        finalizer.settle(Ticket(task_id, "hello"), TaskExit.WORKER_LOST, now=0.0, reason="killed by the test")
    boefje_api.inject("*", delay=DELAY, times=None)

    # when: the loop runs the finalizer, one step at a time, until nothing due now is left
    calls_per_step = []
    try:
        while any(job.due <= 0.0 for job in finalizer.jobs) and len(calls_per_step) < 30:
            before = total_requests(boefje_api)
            finalizer.run(now=0.0)
            calls_per_step.append(total_requests(boefje_api) - before)
    finally:
        client.close()

    # then: every step made progress, none made more calls than the budget allows, and the work
    # was spread over steps instead of done in one long one
    assert calls_per_step and all(1 <= calls <= MOST_CALLS_PER_STEP for calls in calls_per_step), calls_per_step
    assert sum(calls_per_step) == 3 * 1 + 3 * 3  # a push each; GET, PATCH running, POST each
    assert [boefje_api.status(task_id) for task_id in lost] == ["failed"] * 3
    assert [boefje_api.status(task_id) for task_id in pushed] == ["queued"] * 3
