"""ValidatedTask on a real prefork worker, through real Redis and real RabbitMQ."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
from celery import chain
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from celery_kit import ChainPayloadError, PayloadTooLargeError, PayloadValidationError, PermanentError
from celery_kit.testing import publish_raw_message

from .conftest import LiveWorker, wait_until
from .worker_app import Receipt

pytestmark = pytest.mark.integration
TIMEOUT = 30


def _stays(read: object, expected: object, seconds: float = 1.5) -> bool:
    """True if ``read()`` keeps returning ``expected`` for ``seconds`` (nothing more happens)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if read() != expected:  # type: ignore[operator]
            return False
        time.sleep(0.1)
    return True


def test_valid_payload_round_trip_returns_the_typed_result(live_worker: LiveWorker) -> None:
    task = live_worker.app.tasks["kit.receipt"]
    result = task.delay(order_id="7", items=["a", "b", "c"])
    stored = result.get(timeout=TIMEOUT)
    assert stored == {"order_id": 7, "count": 3}
    assert task.parse_result(stored) == Receipt(order_id=7, count=3)
    assert live_worker.count("attempts", result.id) == 1


def test_invalid_raw_message_fails_once_with_field_errors_and_is_not_retried(
    live_worker: LiveWorker,
) -> None:
    # Published around the kit, as another service or language would.
    result = publish_raw_message(live_worker.app, "kit.receipt", args=[{"order_id": -1, "items": "nope"}])
    with pytest.raises(PayloadValidationError) as caught:
        result.get(timeout=TIMEOUT)
    error = caught.value
    assert result.state == "FAILURE"
    assert {tuple(e["loc"]) for e in error.errors} == {("order_id",), ("items",)}
    assert all("input" not in e for e in error.errors)
    assert error.task_name == "kit.receipt"
    assert _stays(lambda: live_worker.count("attempts", result.id), 1)
    events = live_worker.events(result.id)
    assert [(e["type"], e["kind"], e["final"]) for e in events] == [("failed", "invalid_payload", True)]


def test_transient_errors_are_retried_then_succeed(live_worker: LiveWorker, unique: str) -> None:
    task = live_worker.app.tasks["kit.flaky"]
    result = task.delay(key=unique, fail_times=3)
    assert result.get(timeout=TIMEOUT) == 4
    assert live_worker.count("calls", unique) == 4
    events = live_worker.events(result.id)
    assert [e["type"] for e in events] == ["retrying"] * 3
    assert [e["retries"] for e in events] == [0, 1, 2]


def test_retries_exhausted_is_one_final_failure(live_worker: LiveWorker, unique: str) -> None:
    task = live_worker.app.tasks["kit.flaky"]
    result = task.delay(key=unique, fail_times=100)
    with pytest.raises(ConnectionError):
        result.get(timeout=TIMEOUT)
    assert _stays(lambda: live_worker.count("calls", unique), 5)  # first attempt + max_retries=4
    events = live_worker.events(result.id)
    assert [e["type"] for e in events] == ["retrying"] * 4 + ["failed"]
    final = [e for e in events if e["final"]]
    assert final == [
        {
            "type": "failed",
            "kind": "transient",
            "final": True,
            "reason": "retries exhausted",
            "exception": "ConnectionError",
            "retries": 4,
        }
    ]


def test_deadline_holds_across_retries_through_the_first_attempt_header(
    live_worker: LiveWorker, unique: str
) -> None:
    # wait 0.3 s, deadline 1 s, no count limit: attempts at ~0, 0.3, 0.6, 0.9 s. Were the
    # first attempt's time not carried over, every retry would restart the clock and
    # the task would retry forever.
    result = live_worker.app.tasks["kit.deadline"].delay(key=unique)
    with pytest.raises(ConnectionError):
        result.get(timeout=TIMEOUT)
    calls = live_worker.count("calls", unique)
    assert 2 <= calls <= 5
    assert _stays(lambda: live_worker.count("calls", unique), calls)
    final = [e for e in live_worker.events(result.id) if e["final"]]
    assert [(e["reason"], e["retries"]) for e in final] == [("deadline", calls - 1)]


def test_permanent_error_is_never_retried(live_worker: LiveWorker, unique: str) -> None:
    result = live_worker.app.tasks["kit.permanent"].delay(key=unique)
    with pytest.raises(PermanentError):
        result.get(timeout=TIMEOUT)
    assert _stays(lambda: live_worker.count("calls", unique), 1)
    assert [e["kind"] for e in live_worker.events(result.id)] == ["permanent"]


def test_soft_timeout_runs_the_cleanup_exactly_once(live_worker: LiveWorker, unique: str) -> None:
    result = live_worker.app.tasks["kit.slow"].delay(key=unique, seconds=5)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=TIMEOUT)
    assert _stays(lambda: live_worker.count("cleanup", unique), 1)
    events = live_worker.events(result.id)
    assert [(e["kind"], e["final"], e["reason"]) for e in events] == [("timeout", True, "soft time limit")]


def test_task_within_its_soft_limit_runs_no_cleanup(live_worker: LiveWorker, unique: str) -> None:
    result = live_worker.app.tasks["kit.slow"].delay(key=unique, seconds=0.1)
    assert result.get(timeout=TIMEOUT) == "finished"
    assert live_worker.count("cleanup", unique) == 0


def test_chain_feeds_a_result_model_into_the_next_validated_task(live_worker: LiveWorker) -> None:
    tasks = live_worker.app.tasks
    workflow = chain(tasks["kit.make_order"].s(order_id=42, n=3), tasks["kit.receipt"].s())
    result = workflow.apply_async()
    assert result.get(timeout=TIMEOUT) == {"order_id": 42, "count": 3}
    assert result.parent.get(timeout=TIMEOUT)["items"] == ["item-0", "item-1", "item-2"]


def test_chain_step_that_does_not_fit_fails_the_previous_task_readably(live_worker: LiveWorker) -> None:
    tasks = live_worker.app.tasks
    # kit.slow takes a SlowJob; an Order does not fit it.
    workflow = chain(tasks["kit.make_order"].s(order_id=1, n=2), tasks["kit.slow"].s())
    result = workflow.apply_async()
    with pytest.raises(PayloadValidationError) as caught:
        result.parent.get(timeout=TIMEOUT)
    assert "does not fit the signature of 'kit.slow'" in str(caught.value)
    assert {tuple(e["loc"]) for e in caught.value.errors} == {("key",), ("seconds",)}
    assert isinstance(caught.value, ChainPayloadError)
    assert result.parent.state == "FAILURE"
    # Reported as what it is -- one final invalid-payload failure -- never as a success.
    wait_until(lambda: bool(live_worker.events(result.parent.id)), timeout=10)
    finished = live_worker.events(result.parent.id)
    assert [(e["type"], e["kind"], e["final"]) for e in finished] == [("failed", "invalid_payload", True)]
    assert live_worker.count("succeeded", result.parent.id) == 0
    assert live_worker.count("succeeded", result.parent.parent.id if result.parent.parent else "-") == 0


def test_the_worker_refuses_what_the_caller_refuses(live_worker: LiveWorker, unique: str) -> None:
    """A raw message above the cap, or with a lone surrogate, never runs (the caller
    refuses both); the worker goes on with the next message."""
    big = publish_raw_message(live_worker.app, "kit.flaky", args=["x" * (2 * 1024 * 1024), 0])
    lone = publish_raw_message(live_worker.app, "kit.flaky", kwargs={"key": "\ud800", "fail_times": 0})
    after = live_worker.app.tasks["kit.flaky"].delay(key=unique, fail_times=0)
    assert after.get(timeout=TIMEOUT) == 1
    assert _stays(lambda: live_worker.count("attempts", big.id) + live_worker.count("attempts", lone.id), 0)
    with pytest.raises(PayloadTooLargeError):
        live_worker.app.tasks["kit.flaky"].delay(key="x" * (2 * 1024 * 1024), fail_times=0)
    with pytest.raises(ValidationError):
        live_worker.app.tasks["kit.flaky"].delay(key="\ud800", fail_times=0)


def test_a_plain_celery_task_keeps_its_arguments_through_a_retry(live_worker: LiveWorker) -> None:
    stamp = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
    result = live_worker.app.tasks["plain.rescale"].delay(1, stamp)
    foo, bar, kind = result.get(timeout=TIMEOUT)
    assert foo == 10  # retry(kwargs={"foo": ...}) replaced the positional foo, as in Celery
    assert kind == "datetime"  # undeclared: kombu's JSON round trip, not a string
    assert bar == stamp
    assert live_worker.count("calls", f"rescale:{result.id}") == 2


def test_autoretry_keeps_celerys_retry_kwargs_on_a_worker(live_worker: LiveWorker, unique: str) -> None:
    result = live_worker.app.tasks["plain.autoretry"].delay(unique)
    with pytest.raises(ConnectionError):
        result.get(timeout=TIMEOUT)
    assert live_worker.count("calls", unique) == 3  # retry_kwargs' max_retries=2
    wait_until(lambda: len(live_worker.events(result.id)) >= 3, timeout=10)
    events = live_worker.events(result.id)
    # Two pool processes: an attempt may end before the one that retried it has reported.
    assert sorted((e["type"], e["final"], e["reason"]) for e in events) == [
        ("failed", True, "retries exhausted"),
        ("retrying", False, "retriable error"),
        ("retrying", False, "retriable error"),
    ]
