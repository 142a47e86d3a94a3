"""Celery signals bridged into classified TaskEvents."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from pydantic import ValidationError

from celery_kit import EventType, FailureKind, PayloadTooLargeError, TaskEvent, dispatcher_for, validated_task
from celery_kit._bridge import PUBLISHED_AT_HEADER, _queue_wait


@pytest.fixture
def seen(app: Celery) -> list[TaskEvent]:
    events: list[TaskEvent] = []
    dispatcher_for(app).subscribe(events.append)
    return events


def test_an_attempt_is_started_then_finished_once(app: Celery, seen: list[TaskEvent]) -> None:
    @validated_task(app, shared=False, name="b.ok")
    def ok(n: int) -> int:
        time.sleep(0.01)
        return n

    ok.apply((1,), task_id="id-1")
    assert [(e.type, e.task_id, e.task_name) for e in seen] == [
        (EventType.STARTED, "id-1", "b.ok"),
        (EventType.SUCCEEDED, "id-1", "b.ok"),
    ]
    assert seen[1].duration is not None
    assert seen[1].duration >= 0.01
    assert seen[1].finished
    assert not seen[0].finished


def test_plain_celery_tasks_are_bridged_too(app: Celery, seen: list[TaskEvent]) -> None:
    calls: list[int] = []

    @app.task(bind=True, shared=False, name="b.plain", max_retries=1)  # type: ignore[untyped-decorator]
    def plain(self: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise self.retry(countdown=3, exc=ConnectionError("down"))
        raise ValueError("broken")

    plain.apply()
    finished = [e for e in seen if e.finished]
    assert [(e.type, e.kind, e.final) for e in finished] == [
        (EventType.RETRYING, FailureKind.TRANSIENT, False),
        (EventType.FAILED, FailureKind.PERMANENT, True),
    ]
    assert finished[0].delay == 3.0
    assert isinstance(finished[0].exception, ConnectionError)
    assert isinstance(finished[1].exception, ValueError)


def test_caller_refusals_and_publishes(app: Celery, seen: list[TaskEvent]) -> None:
    @validated_task(app, shared=False, name="b.send", max_payload_bytes=100)
    def send(text: str) -> None: ...

    result = send.delay("hello")
    with pytest.raises(ValidationError):
        send.delay(text=1)
    with pytest.raises(PayloadTooLargeError):
        send.delay("x" * 200)
    with pytest.raises(ValidationError):
        send.apply(kwargs={"text": []})
    assert [(e.type, e.task_id, e.queue, e.detail) for e in seen] == [
        (EventType.PUBLISHED, result.id, app.conf.task_default_queue, None),
        (EventType.REFUSED, None, None, "caller"),
        (EventType.REFUSED, None, None, "caller"),
        (EventType.REFUSED, None, None, "caller"),
    ]
    assert isinstance(seen[2].exception, PayloadTooLargeError)


def test_published_messages_carry_their_publish_time(app: Celery) -> None:
    from .conftest import published

    @validated_task(app, shared=False, name="b.stamp")
    def stamp() -> None: ...

    before = time.time()
    stamp.delay()
    (message,) = published(app)
    assert before <= message.headers[PUBLISHED_AT_HEADER] <= time.time()


def test_queue_wait_excludes_the_eta_and_is_never_negative() -> None:
    now = 1_000_000.0
    assert _queue_wait(Context({PUBLISHED_AT_HEADER: now - 2.5}), now) == pytest.approx(2.5)
    eta = datetime.fromtimestamp(now - 1.0, tz=timezone.utc).isoformat()
    assert _queue_wait(Context({PUBLISHED_AT_HEADER: now - 60, "eta": eta}), now) == pytest.approx(1.0)
    future = (datetime.fromtimestamp(now, tz=timezone.utc) + timedelta(seconds=5)).isoformat()
    assert _queue_wait(Context({PUBLISHED_AT_HEADER: now - 60, "eta": future}), now) == 0.0
    assert _queue_wait(Context({PUBLISHED_AT_HEADER: now + 3}), now) == 0.0  # clock skew
    assert _queue_wait(Context({}), now) is None
    assert _queue_wait(Context({PUBLISHED_AT_HEADER: "garbage"}), now) is None


def test_a_failing_observer_is_logged_and_skipped(app: Celery, caplog: pytest.LogCaptureFixture) -> None:
    received: list[TaskEvent] = []

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("observer bug")

    dispatcher_for(app).subscribe(broken)
    dispatcher_for(app).subscribe(received.append)

    @validated_task(app, shared=False, name="b.survives")
    def survives() -> int:
        return 1

    assert survives.apply().get() == 1
    assert [e.type for e in received] == [EventType.STARTED, EventType.SUCCEEDED]
    assert sum("observer" in r.getMessage() for r in caplog.records) == 2
