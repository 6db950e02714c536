"""W3C trace context as text: the ``traceparent`` header a request carries, and the context a
parent process hands over in the environment. Plain strings, no OpenTelemetry: the supervisor
sends these without importing it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

#: A client's ``header_hook``: the headers (here: the trace context) to add to each request.
HeaderHook = Callable[[], Mapping[str, str]]


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    """The W3C ``traceparent`` header value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def environment_context(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The W3C context a parent process handed us in ``TRACEPARENT``/``TRACESTATE``, as headers."""
    environ = os.environ if environ is None else environ
    carrier = {}
    for name in ("traceparent", "tracestate"):
        value = environ.get(name.upper())
        if value:
            carrier[name] = value
    return carrier
