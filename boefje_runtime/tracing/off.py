"""Tracing off, the default everywhere: hooks that return at once and import nothing.

A separate module so that the cost of tracing off is visibly nothing: no ``opentelemetry`` import,
no branch in the callers (they hold :data:`NO_TRACING` and call the same hooks).
"""

from __future__ import annotations

import contextlib
from typing import Any


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

    def action(self, *args: Any, **kwargs: Any) -> contextlib.AbstractContextManager[None]:
        return _NULL_CONTEXT

    def close(self) -> None:
        pass


NO_TRACING = NoTracing()
