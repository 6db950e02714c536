"""The supervisor's part of tracing: ids and times of each pop, no OpenTelemetry.

Why the supervisor creates no span: see the package docstring. It draws a trace id and a span id
before each pop, sends them as the pop's ``traceparent`` and hands them, with the pop's start and
end times, to the worker with the task; the worker records the ``pop`` span with those ids.
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
    """

    trace_id: int
    span_id: int
    start_ns: int
    end_ns: int
    tasks: int
    first: bool = True

    def for_next_task(self) -> PopTrace:
        return PopTrace(self.trace_id, self.span_id, self.start_ns, self.end_ns, self.tasks, first=False)


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
        return PopTrace(self._trace_id, self._span_id, self._start_ns, time.time_ns(), tasks)
