"""RetryPolicy: classification, tenacity delays, deadlines."""

from __future__ import annotations

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st

from celery_kit import ConfigurationError, RetryPolicy


def test_exponential_backoff_without_jitter_honours_floats_and_the_cap() -> None:
    policy = RetryPolicy(retry_on=(OSError,), backoff=0.25, max_backoff=1.5, jitter=False, max_retries=10)
    exc = OSError()
    assert [policy.delay_for(n, exc) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.5, 1.5]


@given(attempt=st.integers(1, 40), backoff=st.floats(0.01, 10), cap=st.floats(0.01, 1000))
def test_full_jitter_stays_within_zero_and_the_exponential_delay(
    attempt: int, backoff: float, cap: float
) -> None:
    policy = RetryPolicy(retry_on=(OSError,), backoff=backoff, max_backoff=cap, max_retries=50)
    ceiling = min(backoff * 2 ** (attempt - 1), cap)
    assert 0.0 <= policy.delay_for(attempt, OSError()) <= ceiling + 1e-9


def test_jitter_actually_varies() -> None:
    policy = RetryPolicy(retry_on=(OSError,), backoff=10, max_backoff=1000)
    assert len({policy.delay_for(5, OSError()) for _ in range(20)}) > 1


def test_any_tenacity_wait_strategy_is_accepted() -> None:
    chained = tenacity.wait_chain(tenacity.wait_fixed(1), tenacity.wait_fixed(7))
    policy = RetryPolicy(retry_on=(OSError,), wait=chained)
    assert [policy.delay_for(n, OSError()) for n in (1, 2, 3)] == [1.0, 7.0, 7.0]
    combined = RetryPolicy(retry_on=(OSError,), wait=tenacity.wait_fixed(2) + tenacity.wait_fixed(0.5))
    assert combined.delay_for(1, OSError()) == 2.5


def test_wait_strategies_see_the_exception_and_the_elapsed_time() -> None:
    seen: list[tuple[int, BaseException | None, float | None]] = []

    def wait(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        seen.append((state.attempt_number, state.outcome.exception(), state.seconds_since_start))
        return 3.0

    exc = OSError("boom")
    assert RetryPolicy(retry_on=(OSError,), wait=wait).delay_for(2, exc, elapsed=12.5) == 3.0
    assert seen[0][0] == 2
    assert seen[0][1] is exc
    assert seen[0][2] == pytest.approx(12.5)


def test_decide_retries_listed_errors_until_the_count_is_used_up() -> None:
    policy = RetryPolicy(retry_on=(OSError,), max_retries=2, wait=tenacity.wait_fixed(1))
    assert policy.decide(OSError(), 0, 100.0, 100.0).retry
    assert policy.decide(ConnectionError(), 1, 100.0, 100.0).retry  # subclass
    stop = policy.decide(OSError(), 2, 100.0, 100.0)
    assert (stop.retry, stop.reason) == (False, "retries exhausted")
    other = policy.decide(ValueError(), 0, 100.0, 100.0)
    assert (other.retry, other.reason) == (False, "not retriable")
    assert policy.decide(ValueError(), 0, 100.0, 100.0, force=True).retry


def test_deadline_refuses_a_retry_that_would_start_after_it() -> None:
    policy = RetryPolicy(retry_on=(OSError,), max_retries=None, deadline=60, wait=tenacity.wait_fixed(10))
    assert policy.decide(OSError(), 5, first_attempt=1000.0, now=1049.0).retry  # starts at 59 s
    late = policy.decide(OSError(), 5, first_attempt=1000.0, now=1051.0)  # would start at 61 s
    assert (late.retry, late.reason, late.delay) == (False, "deadline", 10.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_on": ValueError, "max_retries": None}, "retries forever"),
        ({"retry_on": "ValueError"}, "exception classes"),
        ({"max_retries": -1}, ">= 0"),
        ({"backoff": -1}, "backoff"),
        ({"max_backoff": float("inf")}, "max_backoff"),
        ({"deadline": 0}, "deadline"),
        ({"wait": 5}, "tenacity wait strategy"),
    ],
)
def test_bad_policies_are_refused_with_a_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_single_exception_class_is_normalised_to_a_tuple() -> None:
    assert RetryPolicy(retry_on=OSError).retry_on == (OSError,)
