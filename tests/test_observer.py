"""Observer: the base class users subclass; hooks get classified events, once each."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_kit import (
    ConfigurationError,
    EventType,
    Observer,
    PermanentError,
    RetryPolicy,
    TaskEvent,
    dispatcher_for,
    instrument,
    validated_task,
)


class Ledger(Observer):
    """Records the hooks it overrides; started is left out on purpose."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def on_succeeded(self, event: TaskEvent) -> None:
        self.calls.append(("succeeded", event.task_name, event.final))

    def on_retrying(self, event: TaskEvent) -> None:
        self.calls.append(("retrying", event.reason, event.final))

    def on_failed(self, event: TaskEvent) -> None:
        self.calls.append(("failed", event.reason, event.final))

    def on_refused(self, event: TaskEvent) -> None:
        self.calls.append(("refused", event.task_name, event.final))


def test_an_observer_gets_only_the_events_whose_hooks_it_overrides() -> None:
    assert Ledger.event_types == {
        EventType.SUCCEEDED,
        EventType.RETRYING,
        EventType.FAILED,
        EventType.REFUSED,
    }
    assert Observer.event_types == frozenset()
    assert not Ledger.observes_processes


def test_a_users_observer_sees_each_outcome_once(app: Celery) -> None:
    ledger = Ledger()
    instrument(app, logging=False, metrics=False, alerts=None, health=False, observers=[ledger])
    attempts: list[int] = []

    @validated_task(
        app, shared=False, name="o.flaky", retry=RetryPolicy(retry_on=ConnectionError, max_retries=1)
    )
    def flaky(n: int) -> int:
        attempts.append(n)
        if n < 0:
            raise PermanentError("never")
        if len(attempts) == 1:
            raise ConnectionError("once")
        return n

    assert flaky.apply((1,)).get() == 1
    flaky.apply((-1,))
    with pytest.raises(Exception, match="valid integer"):
        flaky.delay("x")
    assert ledger.calls == [
        ("retrying", "retriable error", False),
        ("succeeded", "o.flaky", False),
        ("failed", "permanent error", True),
        ("refused", "o.flaky", False),
    ]
    assert ledger in dispatcher_for(app).observers


def test_an_observer_that_raises_never_changes_the_outcome(app: Celery) -> None:
    class Broken(Observer):
        def on_succeeded(self, event: TaskEvent) -> None:
            raise RuntimeError("observer bug")

    instrument(app, logging=False, metrics=False, alerts=None, health=False, observers=[Broken()])

    @validated_task(app, shared=False, name="o.fine")
    def fine() -> str:
        return "ok"

    assert fine.apply().get() == "ok"


def test_observers_must_be_observers(app: Celery) -> None:
    def plain(event: TaskEvent) -> None: ...

    with pytest.raises(ConfigurationError, match=r"subclass celery_kit\.Observer"):
        instrument(app, logging=False, metrics=False, observers=[plain])  # type: ignore[list-item]
    assert getattr(app, "_celery_kit_instrumentation", None) is None


def test_process_hooks_are_noticed(app: Celery) -> None:
    class Starts(Observer):
        def on_worker_init(self, worker: Any) -> None: ...

    assert Starts.observes_processes
    assert Starts.event_types == frozenset()
