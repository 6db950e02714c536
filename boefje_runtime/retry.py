"""When a Boefje API call may be repeated, and how long to wait between tries.

Retrying is only safe when a repeat cannot do harm. The rules per call:

- ``SAFE`` (GET task, GET input, PATCH status, push): repeating gives the same end state,
  so retry on connection errors (refused, dropped, timed out), any 5xx and 429.
  PATCH sets an absolute status; push of a task with the same id replaces it on the queue.
- ``UNSENT_ONLY`` (pop): a pop whose answer was lost has already dispatched tasks on the server;
  repeating it would strand those and take new ones. So retry only when the request cannot have
  been acted on: the connection was never made, or the server said "not now" (429, 503).
  A read timeout, a dropped answer, 500, 502 or 504 are not retried here; the worker pool's own
  error back-off decides when to pop again.
- Output POST is ``SAFE`` too, with one twist handled by the client: the API accepts an output once,
  so a 403 on a *repeat* means our earlier try landed and is reported as delivered.

``health()`` is a probe and is never retried: its caller wants to know about *now*.

Waits are exponential with full jitter (so many workers restarting together do not retry in
lockstep), capped per wait and bounded in attempts and in total time; a ``Retry-After`` header on
429/503 is honoured (within the total time).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, stop_after_attempt, stop_after_delay, wait_random_exponential

from .errors import APIConnectionError, APIStatusError

logger = logging.getLogger("boefje_runtime.http")

#: Statuses meaning "the server did not act on this request; try later".
NOT_PROCESSED = frozenset({429, 503})


class CallKind(enum.Enum):
    """How safe a call is to repeat (see the module docstring)."""

    SAFE = "safe"
    UNSENT_ONLY = "unsent-only"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying one call. ``attempts=1`` turns retrying off."""

    attempts: int = 5
    total_seconds: float = 60.0
    initial_wait: float = 0.1
    max_wait: float = 5.0

    def retrying(self, kind: CallKind) -> Retrying:
        """A tenacity controller for calls of ``kind``."""
        return Retrying(
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.total_seconds),
            wait=_RetryAfterOrJitter(self.initial_wait, self.max_wait, self.total_seconds),
            retry=_should_retry(kind),
            before_sleep=_log_retry,
            reraise=True,
        )


NO_RETRY = RetryPolicy(attempts=1)


def is_retryable(exc: BaseException, kind: CallKind) -> bool:
    """The decision table of the module docstring, as a pure function."""
    if isinstance(exc, APIConnectionError):
        return kind is CallKind.SAFE or not exc.sent
    if isinstance(exc, APIStatusError) and exc.status_code is not None:
        if exc.status_code in NOT_PROCESSED:
            return True
        return kind is CallKind.SAFE and exc.status_code >= 500
    return False


def _should_retry(kind: CallKind):
    def check(state: RetryCallState) -> bool:
        outcome = state.outcome
        return outcome is not None and outcome.failed and is_retryable(outcome.exception(), kind)

    return check


class _RetryAfterOrJitter:
    """Full-jitter exponential waits, or the server's ``Retry-After`` when it gave one."""

    def __init__(self, initial: float, maximum: float, ceiling: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial, max=maximum)
        self._ceiling = ceiling

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        wait = max(retry_after, 0.0) if retry_after is not None else self._jitter(state)
        # Never sleep past the total time: the stop condition is only checked after the next try.
        remaining = max(self._ceiling - (state.seconds_since_start or 0.0), 0.0)
        return min(wait, remaining)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.warning("Retrying in %.2f s (attempt %d failed): %s", wait, state.attempt_number, exc)
