"""One task's span and its phases (``PATCH running``, ``run``, ``POST output``, ...), as a worker or
one-shot records them. Apart from the provider (provider.py) because this is what the callers
touch for every task, with the same hooks as tracing off's null span (off.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .names import BOEFJE_ID, BOEFJE_VERSION, ORGANISATION, OUTCOME, OUTPUT_FILES, OUTPUT_SIZE, RUN, TASK_ID


class TaskTrace:
    """One task's span; :meth:`phase` makes a child span current while a phase runs."""

    def __init__(self, tracer: Any, span: Any) -> None:
        self._tracer = tracer
        self.span = span
        self._error: str | None = None
        self._phase: Any = None

    @contextlib.contextmanager
    def phase(self, name: str, **attributes: Any) -> Iterator[None]:
        from opentelemetry import trace

        context = trace.set_span_in_context(self.span)
        kind = trace.SpanKind.INTERNAL if name == RUN else trace.SpanKind.CLIENT
        # The exception's type only, never its text: a message may quote what the task's
        # secrets masking keeps out of the logs, and a trace backend is no safer place.
        with self._tracer.start_as_current_span(
            name, context=context, kind=kind, attributes=attributes or None,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            self._phase = span
            try:
                yield
            except BaseException as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                self._phase = None

    def describe(self, task_id: str, boefje_id: str, version: str | None, organisation: str | None) -> None:
        attributes = {TASK_ID: task_id, BOEFJE_ID: boefje_id}
        if version:
            attributes[BOEFJE_VERSION] = version
        if organisation:
            attributes[ORGANISATION] = organisation
        self.span.set_attributes(attributes)

    def ran(self, output: Any, error: str | None = None) -> None:
        """The boefje's output (its size goes on the span) and, when it failed, why; call it in the
        ``run`` phase, which is then marked ERROR too.

        ``error`` becomes the status description: pass only text already cleared of the task's
        secrets (the executor's one-line error is).
        """
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute(OUTPUT_FILES, len(output.files))
        self.span.set_attribute(OUTPUT_SIZE, sum(decoded_size(file.content) for file in output.files))
        self._error = error
        if error and self._phase is not None:
            self._phase.set_status(Status(StatusCode.ERROR, error))

    def finish(self, outcome: str) -> None:
        """End the task span with its outcome; ERROR unless it completed."""
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute(OUTCOME, outcome)
        if outcome != "completed":
            self.span.set_status(Status(StatusCode.ERROR, self._error or outcome))
        self.span.end()


def decoded_size(content: str) -> int:
    """Bytes of a base64 text, without decoding it."""
    return len(content) * 3 // 4 - content[-2:].count("=")
