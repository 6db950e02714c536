"""Tracing on: the OpenTelemetry provider of one process, and the start of each task's span.

Built lazily, in the process that uses it (``_ensure``), because the pool builds the object in the
supervisor and forks workers: each worker makes its own provider, exporter and export thread after
the fork, and never exports through one inherited from its parent.

How spans leave (:class:`Export`): in the background (the pool's processes), or all at once when
the process closes its tracing (one-shot, which forks its boefje's child mid-run and must do so
with no other thread alive).
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator, Mapping
from typing import Any

from .ids import PresetIds
from .names import POP, POP_TASKS, TASK_SPAN
from .pop import PopTrace
from .task import TaskTrace

#: Ended spans leave this often (the SDK's default is 5 s): a killed worker loses little.
SCHEDULE_DELAY_MS = 1000
#: Longest an export (and so a worker's exit or a one-shot's end) waits for an unreachable collector.
EXPORT_TIMEOUT_S = 5.0


class Export(enum.Enum):
    """When ended spans go to the collector."""

    #: In the background: an export thread sends them every :data:`SCHEDULE_DELAY_MS` (a pool's
    #: supervisor and workers, which run for long and may be SIGKILLed).
    BATCHED = "batched"
    #: Held in memory and sent in one export when the tracing is closed, the exporter (its gRPC
    #: channel, whose C threads start with it) made only then. Why: one-shot forks its boefje's
    #: child mid-run, and a fork while other threads run can leave the child waiting forever on a
    #: lock one of them held (Python 3.12 warns of it, in one-shot's log of every task: there were
    #: eight threads, the export thread and gRPC's). A one-shot run holds a handful of spans.
    AT_CLOSE = "at_close"


def _export_at_close(exporter_factory: Any) -> Any:
    """A span processor for :attr:`Export.AT_CLOSE` (a function, so the SDK is imported only when
    tracing is on)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import SpanExportResult

    class ExportAtClose(SpanProcessor):
        def __init__(self) -> None:
            self._ended: list[Any] = []
            self._exporter: Any = None

        def on_end(self, span: Any) -> None:
            self._ended.append(span)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            ended, self._ended = self._ended, []
            if not ended:
                return True
            if self._exporter is None:
                self._exporter = exporter_factory()
            return self._exporter.export(ended) is SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            self.force_flush()
            if self._exporter is not None:
                self._exporter.shutdown()

    return ExportAtClose()


class Tracing:
    """Tracing on: spans exported over OTLP/gRPC to ``endpoint`` (or to ``exporter``, for tests).

    The provider is built on first use, in the process that uses it, so a pool builds this object
    in the supervisor and each forked worker gets its own provider. Call :meth:`close` before the
    process exits: it flushes what is buffered (bounded by :data:`EXPORT_TIMEOUT_S`).
    """

    enabled = True

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        exporter: Any = None,
        resource: Mapping[str, str] | None = None,
        schedule_delay_ms: int = SCHEDULE_DELAY_MS,
        export: Export = Export.BATCHED,
    ) -> None:
        self.endpoint = endpoint
        self.resource = dict(resource or {})
        self.export = export
        self._exporter = exporter
        self._schedule_delay_ms = schedule_delay_ms
        self._provider: Any = None
        self._tracer: Any = None
        self._ids = PresetIds()
        self._pid = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def preload(self) -> None:
        """Import what a worker will need, in a parent about to fork workers: importing starts no
        thread and opens no connection, and each worker then shares these modules instead of
        importing them again (measured: 0.8 s of CPU per worker on a small machine)."""
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter
        import opentelemetry.sdk.trace.export  # noqa: F401

    def _start(self) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attributes = dict(self.resource)
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes.setdefault("service.name", "boefje-runtime")
        # Not the global provider: a boefje (or a test) may set its own, and a pool's worker must
        # not export through one inherited from its parent.
        provider = TracerProvider(resource=Resource.create(attributes), id_generator=self._ids, shutdown_on_exit=False)
        if self.export is Export.AT_CLOSE:
            provider.add_span_processor(_export_at_close(self._make_exporter))
        else:
            provider.add_span_processor(
                BatchSpanProcessor(
                    self._make_exporter(),
                    schedule_delay_millis=self._schedule_delay_ms,
                    export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
                )
            )
        self._provider, self._pid = provider, os.getpid()
        self._tracer = provider.get_tracer("boefje_runtime")

    def _make_exporter(self) -> Any:
        if self._exporter is not None:
            return self._exporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=self.endpoint, timeout=EXPORT_TIMEOUT_S)

    def _ensure(self) -> Any:
        if self._tracer is None or self._pid != os.getpid():
            # First use in this process (a forked worker never uses its parent's provider).
            self._start()
        return self._tracer

    def close(self) -> None:
        """Flush ended spans and stop the exporter; a later task starts a new provider."""
        provider, self._provider, self._tracer = self._provider, None, None
        if provider is not None and self._pid == os.getpid():
            provider.force_flush(int(EXPORT_TIMEOUT_S * 1000))
            provider.shutdown()

    # -- spans ----------------------------------------------------------------------------------

    def start_task(self, pop: PopTrace | None = None, parent: Mapping[str, str] | None = None) -> TaskTrace:
        """Start a task's span: under the supervisor's ``pop`` ids, or under the W3C context in
        ``parent`` (e.g. ``{"traceparent": ...}`` from the environment), or as a new trace."""
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        tracer = self._ensure()
        parent_context = context.Context()  # never the ambient context: tasks are not nested in anything
        links = []
        start = None
        if pop is not None:
            start = pop.start_ns
            # the ids the supervisor drew for this task's span, so its own spans can be children
            self._ids.trace_id = pop.trace_id if pop.first else (pop.task_trace_id or None)
            self._ids.span_id = pop.task_span_id or None
            if not pop.first:
                links.append(trace.Link(trace.SpanContext(pop.trace_id, pop.span_id, is_remote=True)))
        elif parent:
            parent_context = TraceContextTextMapPropagator().extract(dict(parent))
        span = tracer.start_span(TASK_SPAN, context=parent_context, kind=trace.SpanKind.CONSUMER, start_time=start)
        task = TaskTrace(tracer, span)
        if pop is not None:
            self._ids.span_id = pop.span_id if pop.first else None
            child = tracer.start_span(
                POP, context=trace.set_span_in_context(span), start_time=pop.start_ns, links=links,
                kind=trace.SpanKind.CLIENT, attributes={POP_TASKS: pop.tasks},
            )
            child.end(end_time=pop.end_ns)
        return task

    @contextlib.contextmanager
    def action(self, name: str, parent: tuple[int, int] | None = None, *,
               expected: tuple[type[BaseException], ...] = (), **attributes: Any) -> Iterator[None]:
        """A span for one call the supervisor makes for a task (the finalizer's), current while it
        runs, so the request carries its ``traceparent`` (:meth:`header_hook`). A child of the task's
        span when its ``(trace id, span id)`` is known (``parent``), else a trace of its own.

        An exception marks it ERROR with the exception's type only (as a task's phases), unless it is
        one of ``expected`` (the caller's way of saying "done").
        """
        from opentelemetry import context, trace

        tracer = self._ensure()
        parent_context = context.Context()
        if parent is not None:
            remote = trace.SpanContext(parent[0], parent[1], is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            parent_context = trace.set_span_in_context(trace.NonRecordingSpan(remote), parent_context)
        with tracer.start_as_current_span(
            name, context=parent_context, kind=trace.SpanKind.CLIENT, attributes=attributes or None,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield
            except expected:
                raise
            except BaseException as exc:
                span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                raise

    @staticmethod
    def header_hook() -> Mapping[str, str]:
        """The ``traceparent`` of the current span, for ``BoefjeAPIClient.header_hook``."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return carrier
