"""Hooks the supervisor calls as things happen, so metrics (and tests) need no access to its state.

Subclass :class:`PoolEvents` and override what you need; every method is a no-op here. Hooks run
in the supervisor's loop: keep them fast and never raise.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

logger = logging.getLogger("boefje_runtime.pool")


class PoolEvents:
    """No-op base class of pool event listeners."""

    def task_started(self, boefje_id: str) -> None: ...

    def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None: ...

    def worker_exited(self, reason: str) -> None: ...

    def api_error(self, endpoint: str) -> None: ...

    def workers_changed(self, busy: int, idle: int) -> None: ...

    def held_changed(self, held: int) -> None: ...

    def loop_turned(self, now: float) -> None: ...

    def api_reachable(self, reachable: bool, now: float) -> None: ...

    def draining(self) -> None: ...


def emit(listeners: Iterable[PoolEvents], event: str, *args: object) -> None:
    """Call ``event`` on every listener; one that raises is logged and the others still hear it
    (a broken metrics exporter must not take the supervisor down)."""
    for listener in listeners:
        try:
            getattr(listener, event)(*args)
        except Exception:
            logger.exception("Pool event listener %r failed on %s", listener, event)


@dataclass
class PoolStats(PoolEvents):
    """Plain counters, always kept by the pool (the benchmark and tests read them)."""

    started: int = 0
    outcomes: Counter = field(default_factory=Counter)
    worker_exits: Counter = field(default_factory=Counter)
    api_errors: Counter = field(default_factory=Counter)

    def task_started(self, boefje_id: str) -> None:
        self.started += 1

    def task_finished(self, boefje_id: str, outcome: str, duration: float) -> None:
        self.outcomes[outcome] += 1

    def worker_exited(self, reason: str) -> None:
        self.worker_exits[reason] += 1

    def api_error(self, endpoint: str) -> None:
        self.api_errors[endpoint] += 1
