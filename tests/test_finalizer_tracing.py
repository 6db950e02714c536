"""The finalizer's clean-up calls carry a W3C ``traceparent``, as the worker's calls do: one span per
call, a child of the task's span when the supervisor drew its ids, else a trace of its own.

Real parts: a real :class:`Finalizer` with a real client against the test Boefje API, which records
each request's ``traceparent``; spans read with the SDK's in-memory exporter in this process.
"""

from __future__ import annotations

import pytest

from boefje_runtime.client import BoefjeAPIClient
from boefje_runtime.pool.exits import TaskExit, Ticket
from boefje_runtime.pool.finalizer import Finalizer
from boefje_runtime.tracing import NO_TRACING, PopTracer, Tracing, available

from .helpers import task

pytestmark = pytest.mark.skipif(not available(), reason="needs boefje-runtime[tracing]")


@pytest.fixture
def traced():
    """A Tracing exporting to memory, and a function that flushes it and returns the ended spans."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter=exporter)

    def spans():
        tracing.close()
        return list(exporter.get_finished_spans())

    yield tracing, spans
    tracing.close()


def drive(finalizer: Finalizer, client: BoefjeAPIClient) -> None:
    """Run the finalizer until nothing due now is left (bounded: a job has a few stages)."""
    try:
        for _ in range(20):
            if not any(job.due <= 0.0 for job in finalizer.jobs):
                return
            finalizer.run(now=0.0)
        raise AssertionError(f"the finalizer did not finish: {finalizer.jobs}")
    finally:
        client.close()


def ids(traceparent: str) -> tuple[int, int]:
    _, trace_id, span_id, _ = traceparent.split("-")
    return int(trace_id, 16), int(span_id, 16)


def test_closing_a_lost_workers_task_continues_the_tasks_trace(boefje_api, traced):
    tracing, spans = traced
    # given: a dispatched task, popped under a pop trace the supervisor drew, whose worker died
    tracer = PopTracer()
    tracer.before_pop()
    pop = tracer.after_pop(1)
    task_id = boefje_api.enqueue(task())
    boefje_api.set_status(task_id, "dispatched")
    client = BoefjeAPIClient(boefje_api.url)
    finalizer = Finalizer(client, tracing=tracing)
    finalizer.traces[task_id] = pop  # as the supervisor records it when it hands the task out
    # the worker's span for the task, as the worker starts it from the same pop trace
    worker_task = tracing.start_task(pop)
    worker_task.finish("worker_lost")

    # when: the finalizer closes it
    finalizer.settle(Ticket(task_id, "hello"), TaskExit.WORKER_LOST, now=0.0, reason="killed by the test")
    drive(finalizer, client)

    # then: GET, PATCH running, POST, each in its own span under the task's span, each request
    # carrying its own span's id in the task's trace
    assert boefje_api.status(task_id) == "failed"
    ended = spans()
    [task_span] = [span for span in ended if span.name == "boefje task"]
    actions = [span for span in ended if span.name.startswith("finalize ")]
    assert [span.name for span in actions] == ["finalize look", "finalize start", "finalize post"]
    for span in actions:
        assert (span.context.trace_id, span.parent.span_id) == (pop.trace_id, task_span.context.span_id)
        assert span.attributes["boefje.task.id"] == task_id
        assert span.attributes["boefje.exit"] == "worker_lost"
    records = [record for record in boefje_api.request_log() if record.endpoint in ("get", "patch", "output")]
    assert [record.endpoint for record in records] == ["get", "patch", "output"]
    assert [ids(record.traceparent) for record in records] == [
        (span.context.trace_id, span.context.span_id) for span in actions
    ]
    assert not finalizer.traces, "the pop trace left with the task"


def test_a_task_of_no_known_trace_gets_a_trace_of_its_own_per_call(boefje_api, traced):
    tracing, spans = traced
    # given: a popped task pushed back, its pop trace unknown to the finalizer
    task_id = boefje_api.enqueue(task())
    boefje_api.set_status(task_id, "dispatched")
    client = BoefjeAPIClient(boefje_api.url)
    finalizer = Finalizer(client, tracing=tracing)

    # when
    finalizer.settle(Ticket(task_id, "hello", raw=boefje_api.task(task_id)), TaskExit.PUSHED_BACK, now=0.0)
    drive(finalizer, client)

    # then: the push is a root span, and its request carries that span's traceparent
    assert boefje_api.status(task_id) == "queued"
    [push] = [span for span in spans() if span.name.startswith("finalize ")]
    assert (push.name, push.parent) == ("finalize push", None)
    [record] = [record for record in boefje_api.request_log() if record.endpoint == "push"]
    assert ids(record.traceparent) == (push.context.trace_id, push.context.span_id)


def test_the_other_tasks_of_a_pop_have_their_own_trace_ids_drawn_by_the_supervisor(traced):
    tracing, spans = traced
    tracer = PopTracer()
    tracer.before_pop()
    first = tracer.after_pop(2)
    second = first.for_next_task()

    for pop in (first, second):
        tracing.start_task(pop).finish("completed")

    task_spans = {(span.context.trace_id, span.context.span_id) for span in spans() if span.name == "boefje task"}
    assert task_spans == {first.task_parent, second.task_parent}
    assert first.task_parent[0] == first.trace_id != second.task_parent[0]


def test_with_tracing_off_the_finalizers_requests_carry_no_traceparent(boefje_api):
    task_id = boefje_api.enqueue(task())
    boefje_api.set_status(task_id, "dispatched")
    client = BoefjeAPIClient(boefje_api.url)
    finalizer = Finalizer(client, tracing=NO_TRACING)

    finalizer.settle(Ticket(task_id, "hello"), TaskExit.WORKER_LOST, now=0.0, reason="killed by the test")
    drive(finalizer, client)

    assert boefje_api.status(task_id) == "failed"
    assert all(record.traceparent is None for record in boefje_api.request_log())
