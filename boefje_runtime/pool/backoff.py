"""The two back-offs of the supervisor (idle and errors) and the guard against fork loops."""

from __future__ import annotations

import random


class IdleBackoff:
    """How long to wait before the next pop when the queue was empty.

    Flat at ``first`` for ``hot_window`` seconds after the last task (a task of a bursty queue is
    picked up within ``first``: ``FIRST_POLL_WAIT``), then doubling up to ``ceiling`` (the poll
    interval), so an idle container pops at most once per poll interval.
    """

    def __init__(self, first: float, ceiling: float, hot_window: float) -> None:
        self.first = min(first, ceiling)
        self.ceiling = ceiling
        self.hot_window = hot_window
        self._wait = self.first
        self._last_work = float("-inf")

    def got_work(self, now: float) -> None:
        self._last_work = now
        self._wait = self.first

    def next_wait(self, now: float) -> float:
        """The wait after an empty pop at ``now``."""
        if now - self._last_work < self.hot_window:
            return self.first
        wait = self._wait
        self._wait = min(self._wait * 2, self.ceiling)
        return wait


class ErrorBackoff:
    """Capped, jittered exponential waits after consecutive failures; reset by a success."""

    def __init__(self, first: float = 0.5, ceiling: float = 30.0) -> None:
        self.first = first
        self.ceiling = ceiling
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        wait = min(self.first * 2 ** (self.failures - 1), self.ceiling)
        return wait * random.uniform(0.5, 1.0)

    def succeeded(self) -> None:
        self.failures = 0


class StartupGuard:
    """Stops a worker that dies while starting (e.g. a boefje that crashes on import) from
    becoming a fork loop: each consecutive start-up death doubles the wait before the next start."""

    def __init__(self, first: float = 0.5, ceiling: float = 60.0) -> None:
        self.first = first
        self.ceiling = ceiling
        self.failures = 0
        self.not_before = 0.0

    def died_starting(self, now: float) -> float:
        self.failures += 1
        wait = min(self.first * 2 ** (self.failures - 1), self.ceiling)
        self.not_before = now + wait
        return wait

    def started(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def may_start(self, now: float) -> bool:
        return now >= self.not_before
