"""The supervisor's part of a task's trace: ids and times of each pop, no OpenTelemetry.

Why the supervisor records no task span: see the package docstring. It draws a trace id and a span
id before each pop, sends them as the pop's ``traceparent`` and hands them, with the pop's start and
end times, to the worker with the task; the worker records the ``pop`` span with those ids. It also
draws the ids of each task's span, so that its own later calls for the task (the finalizer's, when
the worker could not close it) are children of that span without asking the worker for them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from .ids import random_id
from .w3c import traceparent


@dataclass(frozen=True)
class PopTrace:
    """A pop as the supervisor saw it: the ids it sent in ``traceparent``, and when it ran.

    ``first`` is True for the first task (group) of the pop: that task continues the pop's trace.
    Other tasks of the same pop start their own traces, their ``pop`` span linked to this one.
    ``task_trace_id`` and ``task_span_id`` are the ids the task's span will have (0: drawn by the
    worker, unknown here).
    """

    trace_id: int
    span_id: int
    start_ns: int
    end_ns: int
    tasks: int
    first: bool = True
    task_trace_id: int = 0
    task_span_id: int = 0

    def for_next_task(self) -> PopTrace:
        """The trace of the pop's next task (group): a trace of its own, its ids drawn now."""
        return PopTrace(self.trace_id, self.span_id, self.start_ns, self.end_ns, self.tasks, first=False,
                        task_trace_id=random_id(128), task_span_id=random_id(64))

    @property
    def task_parent(self) -> tuple[int, int] | None:
        """(trace id, span id) of the task's span, when drawn here: the parent of the finalizer's spans."""
        if self.task_trace_id and self.task_span_id:
            return self.task_trace_id, self.task_span_id
        return None


class PopTracer:
    """The supervisor's tracing: ids for each pop and the header its pop request carries.

    Used as the supervisor client's ``header_hook``; with tracing off the supervisor holds None
    instead and does none of this.
    """

    def __init__(self) -> None:
        self._header: dict[str, str] = {}
        self._trace_id = self._span_id = self._start_ns = 0

    def __call__(self) -> Mapping[str, str]:
        return self._header

    def before_pop(self) -> None:
        self._trace_id, self._span_id = random_id(128), random_id(64)
        self._header = {"traceparent": traceparent(self._trace_id, self._span_id)}
        self._start_ns = time.time_ns()

    def after_pop(self, tasks: int) -> PopTrace:
        """The pop that just ended; the supervisor's later requests carry no pop's header."""
        self._header = {}
        return PopTrace(self._trace_id, self._span_id, self._start_ns, time.time_ns(), tasks,
                        task_trace_id=self._trace_id, task_span_id=random_id(64))
