"""The dispatcher: observers get the event types they declare, and only those."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_kit import Dispatcher, EventType, TaskEvent, dispatcher_for, validated_task


class FailuresOnly:
    event_types = frozenset({EventType.FAILED})

    def __init__(self) -> None:
        self.seen: list[EventType] = []

    def __call__(self, event: TaskEvent) -> None:
        self.seen.append(event.type)


def test_observers_get_only_the_event_types_they_declare() -> None:
    dispatcher = Dispatcher()
    failures = FailuresOnly()
    everything: list[EventType] = []
    dispatcher.subscribe(failures)
    assert dispatcher.wants(EventType.FAILED)
    assert not dispatcher.wants(EventType.STARTED)
    dispatcher.subscribe(lambda event: everything.append(event.type))
    assert dispatcher.wants(EventType.STARTED)
    for kind in (EventType.STARTED, EventType.FAILED, EventType.SUCCEEDED):
        dispatcher.emit(TaskEvent(kind, "t", "id"))
    assert failures.seen == [EventType.FAILED]
    assert everything == [EventType.STARTED, EventType.FAILED, EventType.SUCCEEDED]
    dispatcher.unsubscribe(failures)
    assert failures not in dispatcher.observers
    dispatcher.emit(TaskEvent(EventType.FAILED, "t", "id"))
    assert failures.seen == [EventType.FAILED]


def test_events_nobody_reads_are_not_built(app: Celery) -> None:
    failures = FailuresOnly()
    dispatcher_for(app).subscribe(failures)

    @validated_task(app, shared=False, name="e.ok")
    def ok() -> None: ...

    @validated_task(app, shared=False, name="e.fails")
    def fails() -> None:
        raise ValueError("boom")

    ok.apply()
    fails.apply()
    assert failures.seen == [EventType.FAILED]


def test_task_events_are_frozen_dataclasses() -> None:
    import dataclasses

    event = TaskEvent(EventType.STARTED, "t", "id", queue="q", request=object())
    assert dataclasses.is_dataclass(event)
    defaults = (event.kind, event.final, event.retries, event.reason, event.duration)
    assert defaults == (None, False, 0, "", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.retries = 3  # type: ignore[misc]
    later = dataclasses.replace(event, retries=2)
    assert (later.retries, later.queue, later.request) == (2, "q", event.request)
    assert event.retries == 0
    # request and task are context, not identity: they take no part in equality.
    assert event == TaskEvent(EventType.STARTED, "t", "id", queue="q", request=object())
    assert event != later
    assert dataclasses.asdict(TaskEvent(EventType.FAILED, "t", None))["type"] is EventType.FAILED
    assert "request" not in repr(event)


def test_request_values_never_raise() -> None:
    from celery.app.task import Context

    from celery_kit._bridge import request_value

    request = Context(id="x", celery_kit_context={"request_id": "r"})
    assert request_value(request, "celery_kit_context") == {"request_id": "r"}
    assert request_value(request, "celery_kit_published_at") is None

    class Slotted:
        __slots__ = ("header",)

        def __init__(self) -> None:
            self.header = 1

    assert request_value(Slotted(), "header") == 1
    assert request_value(Slotted(), "missing") is None
    assert request_value(None, "anything") is None
