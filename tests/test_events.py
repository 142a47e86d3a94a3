"""The dispatcher: observers get the event types they declare, and only those."""

from __future__ import annotations

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
