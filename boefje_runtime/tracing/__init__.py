"""OpenTelemetry traces of tasks, joined with OpenKAT's own, when ``SPAN_EXPORT_GRPC_ENDPOINT`` is set.

The only package that touches OpenTelemetry (the optional extra ``boefje-runtime[tracing]``); the
rest of the runtime imports the small interface re-exported here. Its modules, one role each:
``config`` (tracing on or off), ``off`` (the no-op hooks), ``provider`` (a process's provider and
the start of a task's span), ``task`` (a task's span and phases), ``pop`` (the supervisor's pop ids,
no OpenTelemetry), ``ids`` and ``w3c`` (ids and the ``traceparent`` text), ``names``. With tracing
off, every caller holds :data:`NO_TRACING`, whose hooks do nothing, and no ``opentelemetry`` module
is ever imported.

What a task looks like: one span ``boefje task`` (kind CONSUMER) per task, with its phases as child
spans: ``pop``, ``PATCH running``, ``run``, ``POST output`` (and ``settle duplicate`` per duplicate);
attributes for the task id, boefje id and version, organisation, outcome and output size; status
ERROR when the task did not complete. Every Boefje API request carries the W3C ``traceparent`` of
the span it belongs to, so OpenKAT's instrumented API and scheduler continue the same trace.

Where spans are made, and why (the pool forks its workers):

- The **supervisor** records no task span. It draws a trace id and a span id before each pop
  (plain random numbers, :class:`PopTracer`), sends them as the pop's ``traceparent`` and hands
  them, with the pop's start and end times and the ids the task's span is to have, to the worker
  with the task. A dying worker never takes a supervisor span with it.
- The **finalizer** (in the supervisor) makes one span per call it makes for a task that left the
  pool (``finalize <stage>``: close, push back, requeue, recheck), a child of the task's span when
  the supervisor drew its ids, so OpenKAT's API continues the task's trace for those calls too. Its
  provider and export thread start with the first such call, long after the fork server was forked
  (every worker is forked by that clean process, so no thread or channel of this provider is
  inherited by a worker).
- Each **worker** builds its own TracerProvider after the fork, the first time it traces a task.
  It records the task span (starting at the pop, so the time a task waited in the pool shows), and
  the ``pop`` span under it with the ids the supervisor sent: the API's server span for the pop
  joins the same trace. Spans go out in the background (BatchSpanProcessor, 1 s delay); a worker
  flushes and shuts its provider down before it exits (recycled or stopped), so a SIGKILLed worker
  loses its open spans and at most the last second of ended ones.
- **One-shot** continues the trace of the process that started it: the ``TRACEPARENT`` (and
  ``TRACESTATE``) environment variables, OpenTelemetry's convention for handing a context to a child
  process (OpenKAT's runner passes none today; any orchestrator can). Without them it starts a trace.
  Its spans are held until the run ends and leave in one export then (``Export.AT_CLOSE``): the
  boefje's child is forked mid-run, and is forked from a process with no other thread (no export
  thread, no gRPC channel yet).
"""

from __future__ import annotations

from .config import INSTALL_HINT, REQUIRED_MODULES, available, tracing_for
from .names import (
    BOEFJE_ID,
    BOEFJE_VERSION,
    EXIT,
    FINALIZE,
    FINALIZER_STAGE,
    GET_INPUT,
    ORGANISATION,
    OUTCOME,
    OUTPUT_FILES,
    OUTPUT_SIZE,
    PATCH_RUNNING,
    POP,
    POP_TASKS,
    POST_OUTPUT,
    RUN,
    SETTLE_DUPLICATE,
    TASK_ID,
    TASK_SPAN,
)
from .off import NO_TRACING, NoTracing
from .pop import PopTrace, PopTracer
from .provider import EXPORT_TIMEOUT_S, SCHEDULE_DELAY_MS, Export, Tracing
from .task import TaskTrace
from .w3c import HeaderHook, environment_context, traceparent

__all__ = [
    "BOEFJE_ID",
    "BOEFJE_VERSION",
    "EXIT",
    "EXPORT_TIMEOUT_S",
    "FINALIZE",
    "FINALIZER_STAGE",
    "GET_INPUT",
    "INSTALL_HINT",
    "NO_TRACING",
    "ORGANISATION",
    "OUTCOME",
    "OUTPUT_FILES",
    "OUTPUT_SIZE",
    "PATCH_RUNNING",
    "POP",
    "POP_TASKS",
    "POST_OUTPUT",
    "REQUIRED_MODULES",
    "RUN",
    "SCHEDULE_DELAY_MS",
    "SETTLE_DUPLICATE",
    "TASK_ID",
    "TASK_SPAN",
    "Export",
    "HeaderHook",
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
