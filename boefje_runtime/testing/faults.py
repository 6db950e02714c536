"""What the test Boefje API can be told to do wrong, and what it remembers of each request.

Chaos tests inject faults per endpoint (error statuses, delays, dropped connections, malformed
bodies) through :meth:`BoefjeAPIServer.inject`; this module holds the fault itself, the checks on
its arguments and the rule for which fault a request gets. :class:`RequestRecord` is the other
half of that conversation: what a test reads back to see which requests came and how they ended.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: Endpoint names, as used by :meth:`BoefjeAPIServer.inject` and :meth:`BoefjeAPIServer.request_counts`.
ENDPOINTS = ("pop", "push", "patch", "get", "input", "output", "health")
#: What a ``malformed=True`` fault answers: truncated JSON.
MALFORMED_BODY = b'{"results": [{"id": '


@dataclass
class Fault:
    """One injected fault; see :meth:`BoefjeAPIServer.inject`. ``remaining`` None means forever."""

    endpoint: str
    remaining: int | None = 1
    status: int | None = None
    delay: float | None = None
    drop: bool | str = False
    malformed: bool = False
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0

    @property
    def answers(self) -> bool:
        """True when this fault replaces the real answer (so the request has no effect)."""
        return self.status is not None or self.malformed or self.body is not None


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. ``status`` is None when the connection was dropped."""

    method: str
    path: str
    endpoint: str
    status: int | None
    time: float
    #: The W3C ``traceparent`` header it carried, if any (only this header: keeping every header
    #: would cost each request of a benchmark run a dict copy).
    traceparent: str | None = None


def make_fault(
    endpoint: str,
    *,
    status: int | None,
    times: int | None,
    delay: float | None,
    drop: bool | str,
    malformed: bool,
    body: bytes | str | None,
    headers: Mapping[str, str] | None,
) -> Fault:
    """The fault :meth:`BoefjeAPIServer.inject` describes; ValueError for arguments that make no sense."""
    if endpoint != "*" and endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; known: {', '.join(ENDPOINTS)} or '*'")
    if drop not in (False, True, "before", "after"):
        raise ValueError(f"drop must be True, 'before' or 'after', not {drop!r}")
    if times is not None and times < 1:
        raise ValueError("times must be at least 1 (or None for forever)")
    if status is None and delay is None and not drop and not malformed and body is None:
        raise ValueError("inject needs one of status, delay, drop, malformed or body")
    return Fault(
        endpoint=endpoint,
        remaining=times,
        status=status,
        delay=delay,
        drop="before" if drop is True else drop,
        malformed=malformed,
        body=body.encode() if isinstance(body, str) else body,
        headers={key: str(value) for key, value in (headers or {}).items()},
    )


def take_fault(faults: list[Fault], endpoint: str) -> Fault | None:
    """Hand out the first fault in ``faults`` that applies to ``endpoint``, using up one of its times.

    Faults apply in the order injected; a used-up fault is removed from ``faults``. The caller
    holds the server's lock, so two requests never take the same last use.
    """
    for fault in faults:
        if fault.endpoint in (endpoint, "*"):
            fault.hits += 1
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining == 0:
                    faults.remove(fault)
            return fault
    return None
