"""The retry rules as pure functions: ``is_retryable``'s decision table, and the waits and stops of a
``RetryPolicy`` (computed on a hand-made tenacity state, without sleeping)."""

from __future__ import annotations

import pytest
from tenacity import RetryCallState

from boefje_runtime.errors import APIConnectionError, APIResponseError, APIStatusError, ParseError
from boefje_runtime.retry import NO_RETRY, CallKind, RetryPolicy, is_retryable

SAFE, UNSENT_ONLY = CallKind.SAFE, CallKind.UNSENT_ONLY


def status_error(code: int | None, retry_after: float | None = None) -> APIStatusError:
    error = APIStatusError(f"answered {code}", method="GET", url="http://api/x", status_code=code)
    error.retry_after = retry_after
    return error


def connection_error(*, sent: bool) -> APIConnectionError:
    return APIConnectionError("failed", method="POST", url="http://api/x", sent=sent)


def failed_state(policy: RetryPolicy, exc: BaseException, *, attempt: int = 1, elapsed: float = 0.0):
    """(controller, state) as tenacity has them after try number ``attempt`` failed ``elapsed`` s in."""
    controller = policy.retrying(SAFE)
    state = RetryCallState(controller, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    state.start_time = state.outcome_timestamp - elapsed
    return controller, state


def case_id(value: object) -> str | None:
    """Test ids for the decision table: ``unsent``, ``status-503``, ``ParseError``; None keeps pytest's own."""
    if isinstance(value, bool):
        return None
    if isinstance(value, APIConnectionError):
        return "sent" if value.sent else "unsent"
    if isinstance(value, APIStatusError):
        return f"status-{value.status_code}"
    return type(value).__name__


# -- is_retryable ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "safe", "unsent_only"),
    [
        (connection_error(sent=False), True, True),  # refused: never reached the server
        (connection_error(sent=True), True, False),  # dropped, timed out: may have been acted on
        (status_error(429), True, True),  # "not now": not acted on
        (status_error(503), True, True),
        (status_error(500), True, False),
        (status_error(501), True, False),
        (status_error(502), True, False),
        (status_error(504), True, False),
        (status_error(400), False, False),
        (status_error(401), False, False),
        (status_error(403), False, False),
        (status_error(404), False, False),
        (status_error(409), False, False),
        (status_error(422), False, False),
        (status_error(None), False, False),
        (APIResponseError("not JSON", method="GET", url="http://api/x", status_code=200), False, False),
        (ParseError("pop", "expected a list"), False, False),
        (ValueError("a bug"), False, False),
    ],
    ids=case_id,
)
def test_is_retryable(exc, safe, unsent_only):
    assert is_retryable(exc, SAFE) is safe
    assert is_retryable(exc, UNSENT_ONLY) is unsent_only


# -- waits -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8])
def test_own_waits_are_jittered_exponential_and_capped(attempt):
    policy = RetryPolicy(initial_wait=0.1, max_wait=0.5, total_seconds=60)
    controller, state = failed_state(policy, status_error(500), attempt=attempt)

    waits = [controller.wait(state) for _ in range(200)]

    ceiling = min(0.1 * 2 ** (attempt - 1), 0.5)
    assert all(0 <= wait <= ceiling for wait in waits)
    assert len(set(waits)) > 100  # full jitter: workers restarting together do not retry in lockstep


def test_retry_after_is_used_as_given_even_beyond_max_wait():
    controller, state = failed_state(RetryPolicy(max_wait=0.05), status_error(503, retry_after=2.5))

    assert controller.wait(state) == 2.5


def test_a_negative_retry_after_is_no_wait():
    controller, state = failed_state(RetryPolicy(), status_error(429, retry_after=-3))

    assert controller.wait(state) == 0


@pytest.mark.parametrize(
    "exc", [status_error(503, retry_after=30.0), status_error(500)], ids=["retry-after", "own-back-off"]
)
def test_no_wait_runs_past_the_total_time(exc):
    policy = RetryPolicy(total_seconds=10.0, initial_wait=20.0, max_wait=30.0)
    controller, state = failed_state(policy, exc, attempt=3, elapsed=9.0)

    assert all(controller.wait(state) <= 1.0 + 1e-6 for _ in range(50))


def test_no_wait_once_the_total_time_is_spent():
    controller, state = failed_state(RetryPolicy(total_seconds=1.0), status_error(503, retry_after=5), elapsed=2.0)

    assert controller.wait(state) == 0


# -- stops -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "stops"), [(1, False), (2, False), (3, True)])
def test_attempts_bound_the_tries(attempt, stops):
    controller, state = failed_state(RetryPolicy(attempts=3), status_error(503), attempt=attempt)

    assert controller.stop(state) is stops


@pytest.mark.parametrize(("elapsed", "stops"), [(4.9, False), (5.0, True), (7.0, True)])
def test_total_seconds_bound_the_tries(elapsed, stops):
    controller, state = failed_state(RetryPolicy(attempts=100, total_seconds=5.0), status_error(503), elapsed=elapsed)

    assert controller.stop(state) is stops


def test_no_retry_stops_after_the_first_try():
    controller, state = failed_state(NO_RETRY, status_error(503))

    assert controller.stop(state) is True


def test_a_call_that_is_not_retryable_is_not_retried():
    controller, state = failed_state(RetryPolicy(), status_error(404))

    assert controller.retry(state) is False
