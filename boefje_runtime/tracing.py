"""OpenTelemetry traces of tasks, joined with OpenKAT's own, when ``SPAN_EXPORT_GRPC_ENDPOINT`` is set.

The only module that touches OpenTelemetry (the optional extra ``boefje-runtime[tracing]``); the
rest of the runtime calls the small interface below. With tracing off, every caller holds
:data:`NO_TRACING`, whose hooks do nothing, and no ``opentelemetry`` module is ever imported.

What a task looks like: one span ``boefje task`` (kind CONSUMER) per task, with its phases as child
spans: ``pop``, ``PATCH running``, ``run``, ``POST output`` (and ``settle duplicate`` per duplicate);
attributes for the task id, boefje id and version, organisation, outcome and output size; status
ERROR when the task did not complete. Every Boefje API request carries the W3C ``traceparent`` of
the span it belongs to, so OpenKAT's instrumented API and scheduler continue the same trace.

Where spans are made, and why (the pool forks its workers):

- The **supervisor** creates no span, no exporter and no thread. It draws a trace id and a span id
  before each pop (plain random numbers, :func:`new_pop_trace`), sends them as the pop's
  ``traceparent`` and hands them, with the pop's start and end times, to the worker with the task.
  Forking is then safe at any time (first start, recycling, a fork server): there is no exporter
  thread or gRPC channel in the supervisor to inherit, and a dying worker never takes a supervisor
  span with it.
- Each **worker** builds its own TracerProvider after the fork, the first time it traces a task.
  It records the task span (starting at the pop, so the time a task waited in the pool shows), and
  the ``pop`` span under it with the ids the supervisor sent: the API's server span for the pop
  joins the same trace. Spans go out in the background (BatchSpanProcessor, 1 s delay); a worker
  flushes and shuts its provider down before it exits (recycled or stopped), so a SIGKILLed worker
  loses its open spans and at most the last second of ended ones.
- **One-shot** continues the trace of the process that started it: the ``TRACEPARENT`` (and
  ``TRACESTATE``) environment variables, OpenTelemetry's convention for handing a context to a child
  process (OpenKAT's runner passes none today; any orchestrator can). Without them it starts a trace.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: What to install when tracing is asked for without OpenTelemetry (the one line users see).
INSTALL_HINT = "install boefje-runtime[tracing]"

#: The OpenTelemetry distributions of the ``tracing`` extra, as importable modules.
REQUIRED_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")

#: Span names.
TASK_SPAN, POP, PATCH_RUNNING, RUN, POST_OUTPUT, SETTLE_DUPLICATE, GET_INPUT = (
    "boefje task", "pop", "PATCH running", "run", "POST output", "settle duplicate", "GET input",
)

#: Attribute names (OpenKAT's words: task, boefje, organisation).
TASK_ID, BOEFJE_ID, BOEFJE_VERSION, ORGANISATION = (
    "boefje.task.id", "boefje.id", "boefje.version", "boefje.organisation",
)
OUTCOME, OUTPUT_SIZE, OUTPUT_FILES, POP_TASKS = (
    "boefje.outcome", "boefje.output.size", "boefje.output.files", "boefje.pop.tasks",
)

#: Ended spans leave this often (the SDK's default is 5 s): a killed worker loses little.
SCHEDULE_DELAY_MS = 1000
#: Longest an export (and so a worker's exit or a one-shot's end) waits for an unreachable collector.
EXPORT_TIMEOUT_S = 5.0


def available() -> bool:
    """Whether the ``tracing`` extra is installed; finds the modules without importing them."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in REQUIRED_MODULES)
    except (ImportError, ValueError):  # a parent package missing, or blocked in sys.modules
        return False


def tracing_for(endpoint: str | None, *, resource: Mapping[str, str] | None = None) -> Tracing | NoTracing:
    """The tracing a process should use: :data:`NO_TRACING` without an endpoint.

    Raises :class:`ConfigError` (one line, exit 2 in the CLI) when an endpoint is set but the
    extra is not installed, so a misconfigured image fails at start instead of tracing nothing.
    """
    if not endpoint:
        return NO_TRACING
    if not available():
        raise ConfigError(
            f"SPAN_EXPORT_GRPC_ENDPOINT (--span-export-grpc-endpoint) is set but OpenTelemetry is not "
            f"installed: {INSTALL_HINT}"
        )
    return Tracing(endpoint=endpoint, resource=resource)


# -- the supervisor's part: ids and times, no OpenTelemetry ----------------------------------------


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


def _random_id(bits: int) -> int:
    value = 0
    while not value:  # an all-zero id is invalid in W3C trace context
        value = random.getrandbits(bits)
    return value


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """The W3C ``traceparent`` header value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


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
        self._trace_id, self._span_id = _random_id(128), _random_id(64)
        self._header = {"traceparent": traceparent(self._trace_id, self._span_id)}
        self._start_ns = time.time_ns()

    def after_pop(self, tasks: int) -> PopTrace:
        """The pop that just ended; the supervisor's later requests carry no pop's header."""
        self._header = {}
        return PopTrace(self._trace_id, self._span_id, self._start_ns, time.time_ns(), tasks)


# -- tracing off --------------------------------------------------------------------------------


class _NullSpan:
    """A task trace that records nothing; its phases are one shared no-op context manager."""

    __slots__ = ()

    def phase(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[None]:
        return _NULL_CONTEXT

    def describe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def ran(self, output: Any, error: str | None = None) -> None:
        pass

    def finish(self, outcome: str) -> None:
        pass


_NULL_CONTEXT = contextlib.nullcontext()
_NULL_SPAN = _NullSpan()


class NoTracing:
    """Tracing off: every hook returns at once and nothing is imported. The default everywhere."""

    enabled = False
    #: For ``BoefjeAPIClient.header_hook``: None, so requests carry no extra header.
    header_hook = None

    def start_task(self, *args: Any, **kwargs: Any) -> _NullSpan:
        return _NULL_SPAN

    def close(self) -> None:
        pass


NO_TRACING = NoTracing()


# -- tracing on -----------------------------------------------------------------------------------


class _PresetIds:
    """An id generator (duck-typed to OpenTelemetry's ``IdGenerator``) that hands out preset ids
    once, then random ones: how a task span takes the trace id, and its ``pop`` span the span id,
    that the supervisor already sent in the pop's ``traceparent``."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, None
        return value or _random_id(128)

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, None
        return value or _random_id(64)

    def is_trace_id_random(self) -> bool:
        return True  # preset ones too: the supervisor draws them the same way


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
    ) -> None:
        self.endpoint = endpoint
        self.resource = dict(resource or {})
        self._exporter = exporter
        self._schedule_delay_ms = schedule_delay_ms
        self._provider: Any = None
        self._tracer: Any = None
        self._ids = _PresetIds()
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

        exporter = self._exporter
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=self.endpoint, timeout=EXPORT_TIMEOUT_S)
        attributes = dict(self.resource)
        if not os.environ.get("OTEL_SERVICE_NAME"):
            attributes.setdefault("service.name", "boefje-runtime")
        # Not the global provider: a boefje (or a test) may set its own, and a pool's worker must
        # not export through one inherited from its parent.
        provider = TracerProvider(resource=Resource.create(attributes), id_generator=self._ids, shutdown_on_exit=False)
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                schedule_delay_millis=self._schedule_delay_ms,
                export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
            )
        )
        self._provider, self._pid = provider, os.getpid()
        self._tracer = provider.get_tracer("boefje_runtime")

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
            if pop.first:
                self._ids.trace_id = pop.trace_id
            else:
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

    @staticmethod
    def header_hook() -> Mapping[str, str]:
        """The ``traceparent`` of the current span, for ``BoefjeAPIClient.header_hook``."""
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
        return carrier


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
        self.span.set_attribute(OUTPUT_SIZE, sum(_decoded_size(file.content) for file in output.files))
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


def _decoded_size(content: str) -> int:
    """Bytes of a base64 text, without decoding it."""
    return len(content) * 3 // 4 - content[-2:].count("=")


def environment_context(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The W3C context a parent process handed us in ``TRACEPARENT``/``TRACESTATE``, as headers."""
    environ = os.environ if environ is None else environ
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = environ.get(name.upper())
        if value:
            carrier[name] = value
    return carrier


HeaderHook = Callable[[], Mapping[str, str]]

__all__ = [
    "INSTALL_HINT",
    "NO_TRACING",
    "NoTracing",
    "PopTrace",
    "PopTracer",
    "TaskTrace",
    "Tracing",
    "available",
    "environment_context",
    "traceparent",
    "tracing_for",
]
