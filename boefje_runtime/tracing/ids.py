"""Trace and span ids: drawn by plain random numbers (the supervisor draws them without
OpenTelemetry), and handed to OpenTelemetry preset, so a worker's spans carry the ids the
supervisor already sent in a ``traceparent``."""

from __future__ import annotations

import random


def random_id(bits: int) -> int:
    """A random, non-zero id of ``bits`` bits (an all-zero id is invalid in W3C trace context)."""
    value = 0
    while not value:
        value = random.getrandbits(bits)
    return value


class PresetIds:
    """An id generator (duck-typed to OpenTelemetry's ``IdGenerator``) that hands out preset ids
    once, then random ones: how a task span takes the trace id, and its ``pop`` span the span id,
    that the supervisor already sent in the pop's ``traceparent``."""

    def __init__(self) -> None:
        self.trace_id: int | None = None
        self.span_id: int | None = None

    def generate_trace_id(self) -> int:
        value, self.trace_id = self.trace_id, None
        return value or random_id(128)

    def generate_span_id(self) -> int:
        value, self.span_id = self.span_id, None
        return value or random_id(64)

    def is_trace_id_random(self) -> bool:
        return True  # preset ones too: the supervisor draws them the same way
