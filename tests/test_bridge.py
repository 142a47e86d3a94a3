"""Celery signals bridged into classified TaskEvents."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery, signals
from celery.app.task import Context
from celery.exceptions import InvalidTaskError
from kombu.entity import Queue
from kombu.exceptions import ContentDisallowed
from pydantic import ValidationError

from celery_kit import (
    EventType,
    FailureKind,
    MessageRejectedError,
    PayloadTooLargeError,
    TaskEvent,
    dispatcher_for,
    validated_task,
)
from celery_kit._bridge import PUBLISHED_AT_HEADER, _queue_wait
from celery_kit._envelope import envelope_problem
from celery_kit._events import RejectReason
from celery_kit._guard import MessageGuard, report_rejected_message
from celery_kit._lifecycle import _on_worker_init


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


def test_each_nested_eager_attempt_measures_its_own_duration(app: Celery, seen: list[TaskEvent]) -> None:
    """A task that runs itself eagerly, under its own id, nests one attempt in another:
    each keeps its own request and duration, and none is left behind."""
    from celery_kit import _bridge

    calls: list[int] = []

    @app.task(bind=True, shared=False, name="b.nested")  # type: ignore[untyped-decorator]
    def nested(self: Any) -> int:
        calls.append(1)
        depth = len(calls)
        time.sleep(0.02)
        if depth < 3:
            nested.apply(task_id=self.request.id)
        return depth

    nested.apply(task_id="id-nested")
    assert [e.type for e in seen] == [EventType.STARTED] * 3 + [EventType.SUCCEEDED] * 3
    finished = seen[3:]
    durations = [e.duration for e in finished]
    assert all(d is not None for d in durations)
    # The innermost attempt ends first; each outer one contains the one inside it.
    assert 0.02 <= durations[0] < durations[1] < durations[2]  # type: ignore[operator]
    assert durations[2] >= 0.06  # type: ignore[operator]
    starts, ends = [e.request for e in seen[:3]], [e.request for e in finished]
    assert ends == starts[::-1]
    assert len({id(r) for r in starts}) == 3
    assert not [key for key in _bridge._attempts if key[1] == "id-nested"]


def test_two_deliveries_of_one_message_in_two_threads_stay_apart(app: Celery, seen: list[TaskEvent]) -> None:
    """A threads pool can run a redelivered message while the first delivery still runs:
    each attempt ends with its own request and duration, whichever ends first."""
    import threading

    @validated_task(app, shared=False, name="b.twice")
    def twice(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    first = threading.Thread(target=twice.apply, args=((0.05,),), kwargs={"task_id": "dup"})
    second = threading.Thread(target=twice.apply, args=((0.3,),), kwargs={"task_id": "dup"})
    first.start()
    time.sleep(0.02)  # the second delivery starts while the first runs, and ends after it
    second.start()
    first.join()
    second.join()
    finished = [e for e in seen if e.finished]
    slept = [e.request.args[0] for e in finished]  # each event's own request
    durations = [e.duration for e in finished]
    assert slept == [0.05, 0.3]  # in the order they ended
    for seconds, duration in zip(slept, durations, strict=True):
        assert duration is not None
        assert seconds <= duration < seconds + 0.2, (slept, durations)


def test_an_attempt_observed_from_the_middle_has_no_duration(app: Celery, seen: list[TaskEvent]) -> None:
    """Subscribed while an attempt ran (no start recorded): its end is still reported."""
    from celery_kit import _bridge

    @app.task(shared=False, name="b.middle")  # type: ignore[untyped-decorator]
    def middle() -> None:
        for key in [key for key in _bridge._attempts if key[1] == "id-middle"]:
            del _bridge._attempts[key]

    middle.apply(task_id="id-middle")
    assert [(e.type, e.duration) for e in seen] == [(EventType.STARTED, None), (EventType.SUCCEEDED, None)]
    assert seen[1].request is not None
    assert seen[1].request.id == "id-middle"


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
    assert [(e.type, e.task_id, e.queue, e.detail) for e in seen] == [
        (EventType.PUBLISHED, result.id, app.conf.task_default_queue, None),
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


# -- messages that never reach a task ------------------------------------------------------------


def _message(
    body: Any, headers: Any = None, content_type: str = "application/json", properties: Any = None
) -> Any:
    from kombu.message import Message

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Message(  # type: ignore[no-untyped-call]
        body=raw,
        content_type=content_type,
        content_encoding="utf-8",
        headers=headers,
        properties=properties,
        delivery_info={"exchange": "", "routing_key": "q-in"},
        accept=["application/json"],
    )


def _headers(**changes: Any) -> dict[str, Any]:
    return {"task": "b.known", "id": "id-1", **changes}


ENVELOPES = [
    # Celery handles these itself: left alone.
    (_message([[], {}, {}], _headers()), None),
    (_message({"args": [], "kwargs": {}}, _headers()), None),  # hybrid protocol-1 body
    (_message({"task": "b.known", "id": "id-1", "args": [], "kwargs": {}}, {}), None),  # protocol 1
    (_message([[], {}, {}], _headers(task="b.unknown")), None),  # reported as unknown_task
    (_message([[], {}, {}], {}), None),  # no task header: Celery's "unknown message"
    (_message([[], {}, {}], None), None),
    (_message(b"{not json", _headers()), None),  # Celery's decode error
    (_message(b"\x80", _headers(), "application/x-python-serialize"), None),  # content type
    # Celery 5.7 crashes (or loops) on these: reported as invalid messages.
    (_message(5, _headers()), "body (int)"),
    (_message(b"", _headers(), "application/data"), "body (bytes)"),
    (_message({"key": 1}, _headers()), "body (dict)"),
    (_message([[], {}], _headers()), "body (list)"),
    (_message([{}, {}, {}], _headers()), "args (body[0])"),
    (_message([[], [], {}], _headers()), "kwargs (body[1])"),
    (_message([[], {}, 5], _headers()), "embed (body[2])"),
    (_message([[], {}, {}], {"task": "b.known"}), "'id' header"),
    (_message([[], {}, {}], _headers(id=7)), "'id' header"),
    (_message([[], {}, {}], _headers(task="b.unknown", id=None)), "'id' header"),
    (_message([[], {}, {}], _headers(task=["b.known"])), "'task' header"),
    (_message({"task": ["b.known"], "id": "x", "args": []}, {}), "body's 'task'"),
    (_message({"task": "b.known", "args": [], "kwargs": {}}, {}), "'id' header"),
    # Headers Celery parses unchecked before a task runs (issue 15).
    (_message([[], {}, {}], _headers(timelimit=["abc", "xyz"])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(timelimit=["10", "5"])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(timelimit=[1, float("nan")])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(timelimit=[-1, None])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(timelimit=5)), "'timelimit' header"),
    (_message([[], {}, {}], _headers(timelimit=[True, None])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(task="b.unknown", timelimit=["a", "b"])), "'timelimit' header"),
    (_message([[], {}, {}], _headers(eta="")), "'eta' header"),
    (_message([[], {}, {}], _headers(eta=0)), "'eta' header"),
    (_message([[], {}, {}], _headers(eta="soon")), "'eta' header"),
    (_message([[], {}, {}], _headers(eta="9999-12-31T23:59:59-23:00")), "'eta' header"),
    (_message([[], {}, {}], _headers(expires=[])), "'expires' header"),
    (_message([[], {}, {}], _headers(expires="x")), "'expires' header"),
    (_message([[], {}, {}], _headers(retries="abc")), "'retries' header"),
    (_message([[], {}, {}], _headers(retries=None)), "'retries' header"),
    (_message([[], {}, {}], _headers(retries=-1)), "'retries' header"),
    (_message([[], {}, {}], _headers(retries=True)), "'retries' header"),
    (_message([[], {}, {}], _headers(root_id=5)), "'root_id' header"),
    (_message([[], {}, {}], _headers(parent_id={})), "'parent_id' header"),
    (_message([[], {}, {}], _headers(group=[1])), "'group' header"),
    (_message([[], {}, {}], _headers(group_index="1")), "'group_index' header"),
    (_message([[], {}, {}], _headers(shadow=1)), "'shadow' header"),
    (_message([[], {}, {}], _headers(argsrepr=["x"])), "'argsrepr' header"),
    (_message([[], {}, {}], _headers(kwargsrepr="x" * 70_000)), "'kwargsrepr' header"),
    (_message([[], {}, {}], _headers(origin=1)), "'origin' header"),
    (_message([[], {}, {}], _headers(ignore_result="no")), "'ignore_result' header"),
    (_message([[], {}, {}], _headers(stamped_headers="abc")), "'stamped_headers' header"),
    (_message([[], {}, {}], _headers(stamps=[])), "'stamps' header"),
    (_message([[], {}, {}], _headers(headers="abc")), "'headers' header"),
    (_message([[], {}, {}], _headers(errbacks=["b.known"])), "'errbacks' header"),
    (_message([[], {}, {}], _headers(_celery_kit_outcome="x")), "celery_kit"),
    (_message([[], {}, {}], _headers(id="i" * 2000)), "'id' header"),
    (_message([[], {}, {"callbacks": "b.known"}], _headers()), "'callbacks'"),
    (_message([[], {}, {"chain": [{"task": 1}]}], _headers()), "'chain'"),
    (_message([[], {}, {"chord": []}], _headers()), "'chord'"),
    (_message([[], {}, {"chain": [{"task": "b.known"}]}], _headers()), "'options'"),
    (_message([[], {}, {"callbacks": [{"task": "b.known", "args": 5}]}], _headers()), "'args'"),
    (_message(b'[[], {}, {"errbacks": [{"task": "b.known", "kwargs": []}]}]', _headers()), "'kwargs'"),
    (_message(b"[[], {}, {}]", _headers(timelimit=[10**400, None])), "'timelimit' header"),
    (_message({"args": [], "kwargs": {}, "eta": ""}, _headers()), "'eta' header"),  # hybrid
    (_message({"task": "b.known", "id": "x", "args": [], "retries": "1"}, {}), "'retries' header"),
    # Properties Celery copies onto the request (on Redis, whatever JSON the publisher wrote).
    (_message([[], {}, {}], _headers(), properties={"priority": "abc"}), "'priority' property"),
    (_message([[], {}, {}], _headers(), properties={"priority": 256}), "'priority' property"),
    (_message([[], {}, {}], _headers(), properties={"reply_to": ["q"]}), "'reply_to' property"),
    (_message([[], {}, {}], _headers(), properties={"correlation_id": 5}), "'correlation_id' property"),
    (
        _message([[], {}, {}], _headers(), properties={"priority": 9, "reply_to": "", "correlation_id": "c"}),
        None,
    ),
    # ... and what Celery's own producers send stays accepted.
    (_message([[], {}, {}], _headers(timelimit=[None, None], eta=None, expires=None)), None),
    (_message([[], {}, {}], _headers(timelimit=[30, 20.5], retries=3, ignore_result=True)), None),
    (_message([[], {}, {}], _headers(timelimit=[])), None),
    (_message([[], {}, {}], _headers(eta="2026-01-01T00:00:00+00:00", expires="2026-01-02T00:00:00")), None),
    (
        _message(
            [[], {}, {}], _headers(stamped_headers=["on"], stamps={"on": "x"}, group="g", group_index=0)
        ),
        None,
    ),
    (
        _message(
            [
                [],
                {},
                {
                    "callbacks": [{"task": "b.known", "args": [], "kwargs": {}, "options": {}}],
                    "errbacks": None,
                    "chain": [{"task": "b.known", "args": [1], "options": {"task_id": "c"}}],
                    "chord": None,
                },
            ],
            _headers(root_id=None, parent_id="p", shadow="b.alias", argsrepr="()", origin="gen1@host"),
        ),
        None,
    ),
    (_message([[], {}, None], _headers(replaced_task_nesting=1, lang="py", whatever=[1, {"x": 2}])), None),
]


@pytest.mark.parametrize(("message", "problem"), ENVELOPES)
def test_envelope_problems_are_the_ones_celery_cannot_survive(message: Any, problem: str | None) -> None:
    found = envelope_problem(message, {"b.known"})
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


class _Consumer:
    """The parts of Celery's consumer the guard and the signal receivers touch."""

    connection_errors = ()
    event_dispatcher = None
    hostname = "unit@host"

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.strategies = {"b.known": object()}
        self.calls: list[tuple[str, Any]] = []

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.calls.append(("celery decode error", message))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.calls.append(("celery invalid", exc))

    def create_task_handler(self) -> Any:
        return lambda message: self.calls.append(("handled", message))


def _delivered(app: Celery, body: bytes, headers: Any, content_type: str = "application/json") -> Any:
    """A message delivered through kombu's in-memory broker: it can really be settled."""
    queue_name = app.conf.task_default_queue
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange="",
            routing_key=queue_name,
            declare=[Queue(queue_name)],  # type: ignore[no-untyped-call]
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
        )
    conn = app.connection_for_read()
    queue = Queue(queue_name).bind(conn.default_channel)  # type: ignore[no-untyped-call]
    message = queue.get(accept=["application/json"])
    assert message is not None
    return message


def test_rejections_become_one_classified_event_each(app: Celery, seen: list[TaskEvent]) -> None:
    consumer = _Consumer(app)
    message = _message(b"\x80", _headers(), "application/x-python-serialize")
    signals.task_rejected.send(sender=consumer, message=message, exc=ContentDisallowed("pickle"))
    signals.task_rejected.send(sender=consumer, message=_message([[], {}, {}], {}), exc=None)
    signals.task_unknown.send(
        sender=consumer,
        message=_message([[], {}, {}], _headers(task="b.gone", id="id-2")),
        exc=KeyError("b.gone"),
        name="b.gone",
        id="id-2",
    )
    assert [(e.type, e.reason, e.task_name, e.task_id, e.queue) for e in seen] == [
        (EventType.MESSAGE_REJECTED, "content_type", "b.known", "id-1", "q-in"),
        (EventType.MESSAGE_REJECTED, "invalid_message", "unknown", None, "q-in"),
        (EventType.MESSAGE_REJECTED, "unknown_task", "b.gone", "id-2", "q-in"),
    ]
    assert seen[0].detail == "application/x-python-serialize"
    assert isinstance(seen[1].exception, InvalidTaskError)  # says why, for the log line
    assert not any(e.finished for e in seen)


def test_publisher_chosen_text_is_clipped(app: Celery, seen: list[TaskEvent]) -> None:
    headers = _headers(task="x" * 10_000, id="y" * 10_000)
    report_rejected_message(_Consumer(app), _message([[], {}, {}], headers), RejectReason.UNKNOWN_TASK, None)
    (event,) = seen
    assert len(event.task_name) < 210
    assert event.task_id is not None
    assert len(event.task_id) < 210


def test_unobserved_apps_get_no_events_and_no_guard(app: Celery) -> None:
    consumer = _Consumer(app)
    signals.task_rejected.send(sender=consumer, message=_message([[], {}, {}], {}), exc=None)  # no error

    class Worker:
        def __init__(self, app: Celery) -> None:
            self.app = app

    _on_worker_init(sender=Worker(app))  # the worker_init receiver
    assert MessageGuard not in app.steps["consumer"]
    dispatcher_for(app)
    _on_worker_init(sender=Worker(app))
    assert MessageGuard in app.steps["consumer"]


def test_the_guard_refuses_each_message_once_records_a_failure_and_reports_it(
    app: Celery, seen: list[TaskEvent], caplog: pytest.LogCaptureFixture
) -> None:
    consumer = _Consumer(app)
    MessageGuard(consumer)

    undecodable = _delivered(app, b'{"secret-in-body": 1', _headers(id="id-1"))
    consumer.on_decode_error(undecodable, ValueError("bad json"))
    assert consumer.calls == []  # Celery's own handler (which logs the body) is not called
    assert undecodable.acknowledged

    handler = consumer.create_task_handler()
    good = _delivered(app, json.dumps([[], {}, {}]).encode(), _headers(id="id-2"))
    handler(good)
    assert consumer.calls == [("handled", good)]
    malformed = _delivered(app, json.dumps([[], {}, {}]).encode(), _headers(id="id-3", timelimit=["a", "b"]))
    handler(malformed)
    assert consumer.calls == [("handled", good)]
    assert malformed.acknowledged  # rejected, not requeued

    assert [(e.reason, e.task_id) for e in seen] == [("decode_error", "id-1"), ("invalid_message", "id-3")]
    assert isinstance(seen[1].exception, InvalidTaskError)
    assert "'timelimit' header" in str(seen[1].exception)
    for task_id, reason in (("id-1", "decode_error"), ("id-3", "invalid_message")):
        result = app.AsyncResult(task_id)
        assert result.state == "FAILURE"
        assert isinstance(result.result, MessageRejectedError)
        assert result.result.reason == reason
        assert result.result.task_name == "b.known"
    assert app.AsyncResult("id-2").state == "PENDING"
    # Without the kit's logging (not instrumented here), one plain line each; no body.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("message rejected")]
    assert len(lines) == 2
    assert "decode_error" in lines[0]
    assert "id-1" in lines[0]
    assert "'timelimit' header" in lines[1]
    assert not any("secret-in-body" in r.getMessage() for r in caplog.records)


def test_a_refused_message_without_a_string_id_gets_no_result_and_is_still_settled(
    app: Celery, seen: list[TaskEvent]
) -> None:
    consumer = _Consumer(app)
    MessageGuard(consumer)
    message = _delivered(app, json.dumps([[], {}, {}]).encode(), _headers(id=["id-9"]))
    consumer.create_task_handler()(message)
    assert message.acknowledged
    assert [(e.reason, e.task_id) for e in seen] == [("invalid_message", "['id-9']")]
    assert app.AsyncResult("id-9").state == "PENDING"


def test_every_message_celerys_own_producer_sends_passes_the_guard(app: Celery) -> None:
    """The guard refuses only what Celery's producer never sends: every option of
    ``apply_async`` and every canvas shape, published for real, passes (issue 15)."""
    from celery import chain, chord, group
    from kombu.message import Message

    from .conftest import published

    @app.task(shared=False, name="b.add")  # type: ignore[untyped-decorator]
    def add(x: int, y: int = 0) -> int:
        return x + y

    now = datetime.now(timezone.utc)
    add.apply_async(
        (1, 2),
        countdown=5,
        expires=60,
        time_limit=10,
        soft_time_limit=5,
        shadow="b.shadowed",
        ignore_result=True,
        priority=3,
        retries=2,
        link=add.s(3),
        link_error=add.si(0),
        headers={"custom": {"any": ["json", 1]}},
        stamped_headers=["on"],
        on="stamped",  # a stamp: named by stamped_headers, passed as an option
    )
    add.apply_async((1,), eta=now + timedelta(hours=1), expires=now + timedelta(hours=2))
    add.apply_async((1,), eta=datetime(2030, 1, 1), time_limit=1.5)  # naive: Celery's timezone
    chain(add.s(1, 2), add.s(3), add.s(4)).apply_async()
    group(add.s(1), add.s(2)).apply_async()
    chord([add.s(1), add.s(2)], add.s()).apply_async()
    messages = published(app)
    assert len(messages) >= 8
    known = {"b.add"}
    for raw in messages:
        # Re-read as the worker receives it: the JSON on the wire, not the producer's objects.
        message = Message(  # type: ignore[no-untyped-call]
            body=raw.body,
            content_type=raw.content_type,
            content_encoding=raw.content_encoding,
            headers=json.loads(json.dumps(raw.headers, default=str)),
            properties=json.loads(json.dumps(raw.properties, default=str)),
            delivery_info={"exchange": "", "routing_key": "q"},
            accept=["application/json"],
        )
        assert envelope_problem(message, known) is None, raw.headers
