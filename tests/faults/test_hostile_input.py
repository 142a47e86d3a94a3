"""Hostile input: what a careless caller, a stray producer or an attacker can send.

* **Caller** (kombu's in-memory broker, Hypothesis): payloads with wrong types, huge
  strings, deep nesting, unicode, NaN, missing and extra fields raise ``ValidationError``
  or ``PayloadTooLargeError``, and nothing is published -- never anything else.
* **Worker** (a real prefork worker, concurrency 2, the ``reliable`` preset's late acks,
  on Redis and on RabbitMQ): raw messages published around the kit with kombu -- bad
  JSON, refused content types, pickle, an unknown task, missing headers, malformed
  bodies, headers Celery parses unchecked (``timelimit``, ``eta``, ``expires``,
  ``retries``...), depth-5000 nesting, a body above the payload cap, args instead of kwargs. After
  each one the worker is alive and runs a good task, the message is settled exactly once
  (the queue is empty, no unacknowledged copy is left, nothing comes back after a wait),
  the task body never ran and was attempted at most once, a log line names the problem
  (and does not contain the body) and a metric counts it; a refused message with a task
  id has a ``FAILURE`` result holding a ``MessageRejectedError``.
* **Generated envelopes** (Hypothesis, the same worker): header names, value types and
  sizes, content types and body shapes; the worker stays up and runs the next message,
  no body runs twice or for a refused message, every refused task id has its FAILURE.
* **Secrets**: ``SecretStr`` values appear in none of the worker's logs, the alerts, the
  metrics, the result backend or ``celery kit config``, even when task code pastes one
  into its exception; pickle is refused end to end.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from celery_kit import (
    ConfigurationError,
    EventType,
    MessageRejectedError,
    PayloadTooLargeError,
    TaskEvent,
    ValidatedTask,
    dispatcher_for,
    validated_task,
)
from celery_kit.presets import production, reliable
from celery_kit.testing import AlertReceiver, WorkerProcess, read_metric

from .._brokers import drop_queue
from .._support import free_port, json_lines
from ..conftest import RUN_ID, published
from .hostile_app import build_app

ROOT = Path(__file__).resolve().parents[2]
APP_MODULE = "tests.faults.hostile_app"
REJECTED = "celery_worker_messages_rejected_total"
VALIDATION_ERRORS = "celery_task_validation_errors_total"
#: How long a message rejected with requeue, or redelivered, would take to show up again.
WINDOW = 0.75
TIMEOUT = 20.0
CAP = 4096


def wait_until(predicate: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


# -- caller side: Hypothesis against the in-memory broker --------------------------------------


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: int
    items: list[str]
    price: Annotated[float, Field(allow_inf_nan=False)]
    note: str = ""


ARG_FIELDS = ("user_id", "tags", "score")
MODEL_FIELDS = ("order_id", "items", "price")


@dataclass
class Caller:
    app: Celery
    by_args: ValidatedTask
    by_model: ValidatedTask
    events: list[TaskEvent] = field(default_factory=list)

    def drain(self) -> list[Any]:
        return published(self.app)


@pytest.fixture(scope="module")
def caller() -> Iterator[Caller]:
    name = f"hostile-caller-{RUN_ID}-{uuid.uuid4().hex[:6]}"
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.update(task_default_queue=f"q-{name}", broker_connection_retry_on_startup=False)
    app.conf.celery_kit_max_payload_bytes = CAP

    @validated_task(app, shared=False, name="hostile.by_args", soft_time_limit=1, time_limit=2)
    def by_args(
        user_id: int, tags: list[str], score: Annotated[float, Field(allow_inf_nan=False)], note: str = ""
    ) -> None:
        """Validated per argument (a TypedDict that forbids extra keys)."""

    @validated_task(app, shared=False, name="hostile.by_model", soft_time_limit=1, time_limit=2)
    def by_model(order: Order) -> None:
        """Validated as one model (``extra="forbid"``)."""

    result = Caller(app, by_args, by_model)
    dispatcher_for(app).subscribe(result.events.append)
    yield result
    app.close()


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
junk = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
deep = st.integers(min_value=20, max_value=300).map(_nested)
#: Multi-byte characters: the cap counts bytes of JSON, not characters.
huge_text = st.integers(min_value=CAP // 3 + 1, max_value=200_000).map(lambda n: "€" * n)
containers = st.lists(junk, min_size=1, max_size=4) | st.dictionaries(st.text(max_size=8), junk, min_size=1)
#: Pydantic parses numbers from ASCII digits only: without them, no text is a number
#: (but "inf" and "nan", which ``allow_inf_nan=False`` refuses).
no_digits = st.text(st.characters(exclude_characters="0123456789"), min_size=1, max_size=40)
not_finite = st.sampled_from([math.nan, math.inf, -math.inf])
#: Nothing pydantic's lax mode turns into an int (no bools, no numeric strings, no whole floats).
not_an_int = (
    st.none()
    | containers
    | deep
    | huge_text
    | no_digits
    | not_finite
    | st.integers(-(10**6), 10**6).map(lambda n: n + 0.5)
)
#: NaN and infinities are refused by ``allow_inf_nan=False``, as are non-numbers.
not_a_finite_float = not_finite | st.none() | containers | deep | no_digits
not_a_str = st.none() | st.booleans() | st.integers() | st.floats() | containers | deep
not_a_list_of_str = (
    st.none()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.dictionaries(st.text(max_size=8), junk, max_size=3)
    | st.tuples(st.lists(st.text(max_size=10), max_size=3), not_a_str, st.integers(0, 3)).map(
        lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]]
    )
)

Defect = Callable[[dict[str, Any]], None]


def _drop(name: str) -> Defect:
    return lambda payload: payload.pop(name, None)


def _put(name: str, value: Any) -> Defect:
    return lambda payload: payload.__setitem__(name, value)


def defects(
    fields: tuple[str, ...], reserved: frozenset[str], int_field: str, list_field: str, float_field: str
) -> st.SearchStrategy[Defect]:
    """One change that makes any payload invalid (or, for a huge note, too large)."""
    extra_name = st.text(min_size=1, max_size=30).filter(lambda k: k not in reserved)
    return st.one_of(
        st.sampled_from(fields).map(_drop),
        st.tuples(extra_name, junk).map(lambda t: _put(*t)),
        not_an_int.map(lambda v: _put(int_field, v)),
        not_a_list_of_str.map(lambda v: _put(list_field, v)),
        not_a_finite_float.map(lambda v: _put(float_field, v)),
        not_a_str.map(lambda v: _put("note", v)),
        huge_text.map(lambda v: _put("note", v)),
    )


unicode_text = st.text(max_size=30)  # every plane but lone surrogates (tested on their own below)
valid_args = st.fixed_dictionaries(
    {
        "user_id": st.integers(-(10**9), 10**9),
        "tags": st.lists(unicode_text, max_size=4),
        "score": st.floats(allow_nan=False, allow_infinity=False),
    },
    optional={"note": unicode_text},
)
valid_order = st.fixed_dictionaries(
    {
        "order_id": st.integers(-(10**9), 10**9),
        "items": st.lists(unicode_text, max_size=4),
        "price": st.floats(allow_nan=False, allow_infinity=False),
    },
    optional={"note": unicode_text},
)
ARG_DEFECTS = defects(ARG_FIELDS, frozenset({*ARG_FIELDS, "note"}), "user_id", "tags", "score")
MODEL_DEFECTS = defects(
    MODEL_FIELDS, frozenset({*MODEL_FIELDS, "note", "order"}), "order_id", "items", "price"
)
HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _assert_refused(caller: Caller, call: Callable[[], Any]) -> None:
    """The call raises one of the two documented errors, and nothing was published."""
    caller.events.clear()
    with pytest.raises((ValidationError, PayloadTooLargeError)) as refused:
        call()
    event(type(refused.value).__name__)  # --hypothesis-show-statistics: both kinds are reached
    assert caller.drain() == []
    assert [e.type for e in caller.events] == [EventType.REFUSED]


@HYPOTHESIS
@given(payload=valid_args, broken=st.lists(ARG_DEFECTS, min_size=1, max_size=3), form=st.integers(0, 2))
def test_hostile_arguments_are_refused_in_the_caller_and_never_published(
    caller: Caller, payload: dict[str, Any], broken: list[Defect], form: int
) -> None:
    for defect in broken:
        defect(payload)
    task = caller.by_args
    if form == 0:
        _assert_refused(caller, lambda: task.delay(**payload))
    elif form == 1:
        _assert_refused(caller, lambda: task.apply_async(kwargs=payload))
    else:  # the same values, positionally, plus one argument too many
        values = [payload.get(name) for name in (*ARG_FIELDS, "note")]
        _assert_refused(caller, lambda: task.apply_async(args=[*values, "one too many"]))


@HYPOTHESIS
@given(payload=valid_order, broken=st.lists(MODEL_DEFECTS, min_size=1, max_size=3), form=st.integers(0, 3))
def test_hostile_models_are_refused_in_the_caller_and_never_published(
    caller: Caller, payload: dict[str, Any], broken: list[Defect], form: int
) -> None:
    for defect in broken:
        defect(payload)
    task = caller.by_model
    if form == 0:
        _assert_refused(caller, lambda: task.delay(**payload))
    elif form == 1:
        _assert_refused(caller, lambda: task.delay(payload))
    elif form == 2:
        _assert_refused(caller, lambda: task.delay(order=payload))
    else:  # args instead of kwargs: the fields positionally
        _assert_refused(caller, lambda: task.apply_async(args=list(payload.values()) or [None, None]))


oversize = huge_text.map(lambda text: ("note", text)) | st.integers(CAP // 4, 50_000).map(
    lambda n: ("tags", ["€"] * n)
)


@settings(max_examples=50, deadline=None)
@given(payload=valid_args, filler=oversize)
def test_oversize_payloads_are_refused_in_the_caller_and_never_published(
    caller: Caller, payload: dict[str, Any], filler: tuple[str, Any]
) -> None:
    name, value = filler
    payload[name] = value
    caller.events.clear()
    with pytest.raises(PayloadTooLargeError) as refused:
        caller.by_args.delay(**payload)
    assert refused.value.size > refused.value.limit == CAP  # bytes of JSON, not characters
    assert caller.drain() == []
    assert [e.type for e in caller.events] == [EventType.REFUSED]


@given(payload=valid_args)
@settings(max_examples=25, deadline=None)
def test_valid_payloads_still_publish_exactly_once(caller: Caller, payload: dict[str, Any]) -> None:
    """The control: the generators above break payloads, not the task."""
    caller.by_args.delay(**payload)
    assert len(caller.drain()) == 1


UNENCODABLE = [
    pytest.param({"user_id": 1, "tags": ["\ud800"], "score": 1.0}, id="lone-surrogate"),
    pytest.param({"user_id": 1, "tags": [], "score": 1.0, "note": "ok \udfff"}, id="lone-low-surrogate"),
]


@pytest.mark.parametrize("payload", UNENCODABLE)
def test_strings_json_cannot_encode_are_never_published(caller: Caller, payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="cannot be encoded as JSON"):
        caller.by_args.delay(**payload)
    assert caller.drain() == []


@pytest.mark.parametrize("payload", UNENCODABLE)
def test_strings_json_cannot_encode_raise_a_validation_error(caller: Caller, payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        caller.by_args.delay(**payload)


def test_pickle_is_refused_by_every_preset_and_by_the_caller(caller: Caller) -> None:
    url = "redis://127.0.0.1:6379/0"
    for bad in (
        {"task_serializer": "pickle"},
        {"result_serializer": "pickle"},
        {"accept_content": ["json", "pickle"]},
        {"result_accept_content": ["application/x-python-serialize"]},
    ):
        for preset in (production, reliable):
            with pytest.raises(ConfigurationError, match="pickle"):
                preset(url, **bad)
    conf = reliable(url, url)
    assert conf["accept_content"] == ["json"]
    assert conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    with pytest.raises(ConfigurationError, match="pickle"):
        caller.by_args.apply_async(kwargs={"user_id": 1, "tags": [], "score": 1.0}, serializer="pickle")
    assert caller.drain() == []


# -- worker side: raw messages published around the kit -----------------------------------------


@dataclass(frozen=True)
class RawMessage:
    body: bytes
    headers: Any
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @property
    def task_id(self) -> str | None:
        task_id = self.headers.get("id") if isinstance(self.headers, dict) else None
        return task_id if isinstance(task_id, str) else None


def task_headers(task: str = "hostile.count", **changes: Any) -> dict[str, Any]:
    """Celery protocol-2 headers, as any producer would send them."""
    task_id = str(uuid.uuid4())
    headers: dict[str, Any] = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "hostile-test",
        "ignore_result": False,
    }
    headers.update(changes)
    return {k: v for k, v in headers.items() if v is not _MISSING}


_MISSING: Any = object()


def body(args: Any = (), kwargs: Any = None, embed: Any = None) -> bytes:
    return json.dumps([list(args), {} if kwargs is None else kwargs, embed or {}]).encode()


class _Exploit:
    """Unpickling it creates a file: proof that a worker ran code from a message."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str, Path], RawMessage]
    #: The ``reason`` label of celery_worker_messages_rejected_total; None: reaches the task.
    reason: str | None
    #: What the log line's exception type or message must mention.
    says: str


CASES = [
    Case(
        "bad-json-body",
        lambda key, _: RawMessage(b'[[], {"key": "' + key.encode() + b'"', task_headers()),
        "decode_error",
        "DecodeError",
    ),
    Case(
        "wrong-content-type",
        lambda key, _: RawMessage(f"key={key}".encode(), task_headers(), content_type="text/plain"),
        "content_type",
        "text/plain",
    ),
    Case(
        "binary-content-type",
        lambda key, _: RawMessage(
            body(kwargs={"key": key}),
            task_headers(),
            content_type="application/data",
            content_encoding="binary",
        ),
        "invalid_message",
        "[args, kwargs, embed]",
    ),
    Case(
        "pickle-content-type",
        lambda key, tmp: RawMessage(
            pickle.dumps(((), {"key": key, "note": _Exploit(tmp / "pwned")}, {})),
            task_headers(),
            content_type="application/x-python-serialize",
            content_encoding="binary",
        ),
        "content_type",
        "pickle",
    ),
    Case(
        "unknown-task-name",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers("hostile.no_such_task")),
        "unknown_task",
        "hostile.no_such_task",
    ),
    Case(
        "missing-headers",
        lambda key, _: RawMessage(body(kwargs={"key": key}), {}),
        "invalid_message",
        "no 'task' header",
    ),
    Case(
        "missing-id-header",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(id=_MISSING, root_id=_MISSING)),
        "invalid_message",
        "'id' header",
    ),
    Case(
        "body-not-an-array",
        lambda key, _: RawMessage(json.dumps({"key": key}).encode(), task_headers()),
        "invalid_message",
        "[args, kwargs, embed]",
    ),
    Case(
        "kwargs-not-an-object",
        lambda key, _: RawMessage(json.dumps([[], ["key", key], {}]).encode(), task_headers()),
        "invalid_message",
        "kwargs (body[1]) must be an object",
    ),
    # Headers Celery 5.7 parses before any task runs, unchecked (issue 15): each of these
    # crashed or misled the worker before the guard checked it.
    Case(
        "timelimit-not-numbers",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(timelimit=["abc", "xyz"])),
        "invalid_message",
        "'timelimit' header",
    ),
    Case(
        "timelimit-numeric-strings",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(timelimit=["10", "5"])),
        "invalid_message",
        "'timelimit' header",
    ),
    Case(
        "timelimit-three-items",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(timelimit=[1, 2, 3])),
        "invalid_message",
        "'timelimit' header",
    ),
    Case(
        "eta-empty",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(eta="")),
        "invalid_message",
        "'eta' header",
    ),
    Case(
        "eta-not-a-date",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(eta="tomorrow")),
        "invalid_message",
        "'eta' header",
    ),
    Case(
        "eta-out-of-range",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(eta="9999-12-31T23:59:59-23:00")),
        "invalid_message",
        "'eta' header",
    ),
    Case(
        "expires-a-number",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(expires=12)),
        "invalid_message",
        "'expires' header",
    ),
    Case(
        "retries-not-a-number",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(retries="abc")),
        "invalid_message",
        "'retries' header",
    ),
    Case(
        "ignore-result-a-string",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(ignore_result="no")),
        "invalid_message",
        "'ignore_result' header",
    ),
    Case(
        "root-id-a-list",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(root_id=["x"])),
        "invalid_message",
        "'root_id' header",
    ),
    Case(
        "stamped-headers-not-names",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(stamped_headers=[{}], stamps={})),
        "invalid_message",
        "'stamped_headers' header",
    ),
    Case(
        "errbacks-not-signatures",
        lambda key, _: RawMessage(
            body(kwargs={"key": key}, embed={"errbacks": ["hostile.count"]}), task_headers()
        ),
        "invalid_message",
        "'errbacks'",
    ),
    Case(
        "kit-attribute-header",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(_celery_kit_outcome="x")),
        "invalid_message",
        "celery_kit",
    ),
    Case(
        "argsrepr-oversize",
        lambda key, _: RawMessage(body(kwargs={"key": key}), task_headers(argsrepr="x" * 70_000)),
        "invalid_message",
        "'argsrepr' header",
    ),
    Case(
        "depth-5000-nesting",
        lambda key, _: RawMessage(
            b'[[], {"key": "' + key.encode() + b'", "note": ' + b"[" * 5000 + b"]" * 5000 + b"}, {}]",
            task_headers(),
        ),
        "decode_error",
        "DecodeError",
    ),
    Case(
        "args-instead-of-kwargs",
        lambda key, _: RawMessage(body(args=[{"key": key, "note": "x"}]), task_headers()),
        None,
        "key",
    ),
    Case(
        "oversize-body",  # above the cap: refused before any task runs, as the caller refuses it
        lambda key, _: RawMessage(body(kwargs={"key": key, "note": "x" * 1_000_000}), task_headers()),
        "invalid_message",
        "-byte cap",
    ),
]


@dataclass
class HostileWorker:
    broker: str
    app: Celery
    worker: WorkerProcess
    state: redis.Redis
    prefix: str
    queue: str
    port: int

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(name, labels, port=self.port)

    def count(self, kind: str, key: str) -> int:
        return int(self.state.get(f"{self.prefix}:{kind}:{key}") or 0)

    def publish(self, message: RawMessage) -> None:
        with self.app.connection_for_write() as conn:
            conn.Producer().publish(
                message.body,
                exchange="",
                routing_key=self.queue,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
                retry=True,
            )

    def waiting(self) -> int:
        """Messages ready in the queue (Redis drops an empty list: no queue, no message)."""
        with self.app.connection_for_write() as conn:
            try:
                _, count, _ = conn.default_channel.queue_declare(self.queue, passive=True)
            except conn.channel_errors:
                return 0
        return int(count)

    def unacknowledged(self) -> int:
        """Redis: deliveries of this queue the worker took and has not settled.

        kombu keeps them in one ``unacked`` hash per database (shared with other tests),
        as ``[message, exchange, routing_key]``; RabbitMQ is checked at teardown instead.
        """
        if not self.broker.startswith("redis"):
            return 0
        broker = redis.Redis.from_url(self.broker)
        try:
            return sum(1 for _, raw in broker.hscan_iter("unacked") if json.loads(raw)[2] == self.queue)
        finally:
            broker.close()

    def log_lines(self, since: int = 0) -> list[dict[str, Any]]:
        return json_lines(self.worker.log()[since:])


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def hostile(request: pytest.FixtureRequest, redis_url: str) -> Iterator[HostileWorker]:
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    prefix = f"kit-{RUN_ID}-hostile-{request.param}-{uuid.uuid4().hex[:6]}"
    queue = f"{prefix}-q"
    port = free_port()
    app = build_app(broker, redis_url, queue, redis_url, prefix)
    worker = WorkerProcess(
        APP_MODULE,
        queues=[queue],
        pool="prefork",
        concurrency=2,
        cwd=ROOT,
        env={
            "KIT_HOSTILE_BROKER_URL": broker,
            "KIT_HOSTILE_BACKEND_URL": redis_url,
            "KIT_HOSTILE_QUEUE": queue,
            "KIT_HOSTILE_STATE_URL": redis_url,
            "KIT_HOSTILE_PREFIX": prefix,
            "KIT_HOSTILE_METRICS_PORT": str(port),
            "PYTHONPATH": str(ROOT),
        },
    )
    worker.start()
    state = redis.Redis.from_url(redis_url)
    hostile = HostileWorker(broker, app, worker, state, prefix, queue, port)
    try:
        yield hostile
        assert worker.stop() == 0, f"the worker did not exit cleanly:\n{worker.log()[-3000:]}"
        # Late acks: a message the worker never settled is back in the queue once it is gone.
        assert hostile.unacknowledged() == 0
        assert drop_queue(app, queue) == 0, "messages left unsettled in the queue"
    finally:
        worker.stop()
        for key in state.scan_iter(f"{prefix}:*"):
            state.delete(key)
        state.close()
        app.close()


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_raw_message_is_settled_once_logged_and_counted_and_the_worker_carries_on(
    hostile: HostileWorker, case: Case, tmp_path: Path
) -> None:
    key = f"{case.name}-{uuid.uuid4().hex[:6]}"
    message = case.build(key, tmp_path)
    task_id = message.task_id
    if case.reason is not None:
        counter, labels = REJECTED, {"reason": case.reason}
    else:
        counter, labels = VALIDATION_ERRORS, {"task": "hostile.count", "side": "worker"}
    before = hostile.metric(counter, **labels)
    rejected_before = hostile.metric(REJECTED)
    log_from = len(hostile.worker.log())

    hostile.publish(message)
    wait_until(lambda: hostile.metric(counter, **labels) > before, what=f"{counter}{labels} to count it")

    # The worker is up and still works.
    assert hostile.worker.process is not None
    assert hostile.worker.process.poll() is None, hostile.worker.log()[-3000:]
    good = hostile.app.tasks["hostile.count"].delay(key=f"good-{uuid.uuid4().hex}")
    assert good.get(timeout=TIMEOUT) == 1

    # Settled exactly once: nothing waiting, nothing held, nothing coming back.
    time.sleep(WINDOW)
    assert hostile.metric(counter, **labels) == before + 1
    assert hostile.waiting() == 0
    assert hostile.unacknowledged() == 0
    assert hostile.count("runs", key) == 0  # the task body never ran
    if task_id is not None:
        assert hostile.count("attempts", task_id) == (0 if case.reason else 1)

    lines = hostile.log_lines(since=log_from)
    if case.reason is not None:
        [line] = [line for line in lines if line.get("event") == "message rejected"]
        assert line["reason"] == case.reason
        assert line["level"] == "error"
        said = f"{line.get('exception_type')}: {line.get('exception_message')} {line.get('task_name')}"
        assert case.says in said
        if task_id is not None:
            assert line["task_id"] == task_id
    else:
        [line] = [line for line in lines if line.get("event") == "task payload invalid"]
        assert line["task_id"] == task_id
        assert [error["loc"] for error in line["validation_errors"]] == [[case.says]]
        assert hostile.metric(REJECTED) == rejected_before  # it did reach its task

    if case.name == "pickle-content-type":
        assert not (tmp_path / "pwned").exists(), "the worker unpickled a message"
    if case.reason is not None and task_id is not None:
        # The caller learns at once why its task never ran: a typed FAILURE result.
        result = hostile.app.AsyncResult(task_id)
        with pytest.raises(MessageRejectedError) as refused:
            result.get(timeout=TIMEOUT)
        assert result.state == "FAILURE"
        assert refused.value.reason == case.reason
        assert refused.value.task_name == message.headers["task"]
        assert "fix the producer" in str(refused.value)
    # Celery's own lines for refused messages used to dump the body (issue 15).
    assert key not in hostile.worker.log()[log_from:]


# -- secrets -------------------------------------------------------------------------------------


class _Account(BaseModel):
    user: str
    api_key: SecretStr


def test_secrets_stay_out_of_the_message_headers(caller: Caller) -> None:
    secret = f"hunter2-{uuid.uuid4().hex}"

    @validated_task(caller.app, shared=False, name="hostile.headers", soft_time_limit=1, time_limit=2)
    def login(account: _Account) -> None: ...

    login.delay(user="ann", api_key=secret)
    [message] = caller.drain()
    assert secret in message.body.decode()  # the worker needs the real value
    assert secret not in json.dumps(message.headers, default=str)


def _kit_config(secret: str, *args: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KIT_HOSTILE_BROKER_URL": f"amqp://guest:{secret}@127.0.0.1:5672//",
        "KIT_HOSTILE_BACKEND_URL": f"redis://:{secret}@127.0.0.1:6379/11",
        "KIT_HOSTILE_STATE_URL": f"redis://:{secret}@127.0.0.1:6379/11",
        "KIT_HOSTILE_QUEUE": "hostile-config",
        "KIT_HOSTILE_PREFIX": "hostile-config",
    }
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", APP_MODULE, "kit", "config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.mark.integration
def test_secret_values_appear_in_no_log_alert_metric_result_or_config(
    redis_url: str,
    celery_kit_worker: Callable[..., WorkerProcess],
    celery_kit_queue: str,
    captured_alerts: AlertReceiver,
) -> None:
    secret = f"hunter2-{uuid.uuid4().hex}"
    prefix = f"kit-{RUN_ID}-secret-{uuid.uuid4().hex[:6]}"
    port = free_port()
    app = build_app(redis_url, redis_url, celery_kit_queue, redis_url, prefix)
    worker = celery_kit_worker(
        APP_MODULE,
        queues=[celery_kit_queue],
        pool="prefork",
        concurrency=2,
        env={
            "KIT_HOSTILE_BROKER_URL": redis_url,
            "KIT_HOSTILE_BACKEND_URL": redis_url,
            "KIT_HOSTILE_QUEUE": celery_kit_queue,
            "KIT_HOSTILE_STATE_URL": redis_url,
            "KIT_HOSTILE_PREFIX": prefix,
            "KIT_HOSTILE_METRICS_PORT": str(port),
            "KIT_HOSTILE_WEBHOOK": captured_alerts.url,
        },
    )
    state = redis.Redis.from_url(redis_url)
    try:
        ok = app.tasks["hostile.login"].delay(user="ann", api_key=secret)
        failing = app.tasks["hostile.locked"].delay(user="bob", api_key=secret)
        leaky = app.tasks["hostile.leaky"].delay(user="cy", api_key=secret)
        # Around the caller: an invalid payload that carries the secret to the worker.
        invalid = app.send_task("hostile.login", kwargs={"user": ["not", "a", "name"], "api_key": secret})
        assert ok.get(timeout=TIMEOUT) == {"user": "ann", "token": "**********"}
        for result in (failing, invalid, leaky):
            result.get(timeout=TIMEOUT, propagate=False)
            assert result.state == "FAILURE"
        alerts = captured_alerts.wait_for(
            lambda a: {x.task_name for x in a} >= {"hostile.locked", "hostile.login", "hostile.leaky"},
            timeout=TIMEOUT,
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            metrics_text = response.read().decode()
        results = [state.get(f"celery-task-meta-{r.id}") or b"" for r in (ok, failing, invalid, leaky)]
        wait_until(lambda: "task payload invalid" in worker.log(), what="the invalid payload's log line")
        wait_until(lambda: "bad token" in worker.log(), what="Celery's and the kit's failure lines")
        log = worker.log()
        config_text = _kit_config(secret)
        config_json = _kit_config(secret, "--json", "--all")
    finally:
        state.close()

    # Something was captured everywhere, or the test could not fail.
    lines = json_lines(log)
    events = {line.get("event") for line in lines}
    assert {"task succeeded", "task failed", "task payload invalid"} <= events
    masked = [line["payload"] for line in lines if isinstance(line.get("payload"), dict)]
    assert {"user": "bob", "api_key": "**********"} in masked  # log_payload=True, masked
    locked = next(a for a in alerts if a.task_name == "hostile.locked")
    assert locked.payload == {"user": "bob", "api_key": "**********"}  # alert_payload=True, masked
    assert captured_alerts.raw
    assert 'task="hostile.login"' in metrics_text
    assert all(results)
    assert b"PayloadValidationError" in results[2]
    # The secret the task pasted into its error is masked in every copy (issue 15): the
    # stored exception and traceback, the alert, the kit's and Celery's log lines.
    assert isinstance(leaky.result, ValueError)
    assert str(leaky.result) == "bad token **********"
    assert b"no session for **********" in results[3]  # the chained cause, in the traceback
    leaked = next(a for a in alerts if a.task_name == "hostile.leaky")
    assert leaked.exception_message == "bad token **********"
    assert any(line.get("exception_message") == "bad token **********" for line in lines)
    assert "broker_url" in config_text
    assert "********" in config_text
    assert '"broker_url"' in config_json

    # ... and the secret in none of it.
    assert secret not in log
    for raw in captured_alerts.raw:
        assert secret.encode() not in raw
    assert secret not in metrics_text
    for value in results:
        assert secret.encode() not in value
    assert secret not in config_text
    assert secret not in config_json


# -- generated envelopes: Hypothesis against the same real worker --------------------------------

#: Every header Celery's worker reads, plus the embed keys it also takes from headers.
CELERY_HEADERS = (
    "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries", "timelimit",
    "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting", "stamped_headers", "stamps", "headers", "callbacks", "errbacks",
    "chain", "chord", "lang", "countdown", "priority", "delivery_info", "reply_to",
    "correlation_id", "is_eager", "_celery_kit_outcome", "celery_kit_first_attempt",
    "celery_kit_published_at", "celery_kit_context",
)  # fmt: skip
#: AMQP tables carry signed 64-bit integers: stay inside, so every envelope can be published.
header_ints = st.integers(-(2**62), 2**62)
header_scalars = (
    st.none()
    | st.booleans()
    | header_ints
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["", "2020-01-01T00:00:00", "2020-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:00"])
    | st.integers(1_000, 70_000).map(lambda n: "h" * n)  # oversized
)
header_values = st.recursive(
    header_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
) | st.tuples(header_scalars, header_scalars).map(list)  # two-item lists: timelimit's shape
header_changes = st.dictionaries(
    st.sampled_from(CELERY_HEADERS) | st.text(min_size=1, max_size=20), header_values, max_size=4
)
CONTENT_TYPES = st.sampled_from(
    [
        ("application/json", "utf-8"),
        ("application/json", "utf-8"),
        ("application/json", "utf-8"),
        ("application/x-python-serialize", "binary"),
        ("application/x-yaml", "utf-8"),
        ("application/x-msgpack", "binary"),
        ("application/data", "binary"),
        ("text/plain", "utf-8"),
    ]
)


def _shaped_body(key: str, shape: str, filler: Any, depth: int) -> bytes:
    kwargs: dict[str, Any] = {"key": key}
    if shape == "valid":
        return body(kwargs=kwargs)
    if shape == "embed":
        return json.dumps([[], kwargs, filler]).encode()
    if shape == "args":
        return json.dumps([filler, kwargs, {}]).encode()
    if shape == "junk":
        return json.dumps(filler).encode()
    if shape == "deep":
        return b'[[], {"key": "' + key.encode() + b'", "note": ' + b"[" * depth + b"]" * depth + b"}, {}]"
    if shape == "bytes":
        return os.urandom(depth % 64)
    return body(kwargs={**kwargs, "note": "n" * depth * 40})  # "huge": above the note's max_length


@dataclass(frozen=True)
class Envelope:
    message: RawMessage
    key: str


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    key = f"gen-{uuid.uuid4().hex}"
    count = st.just("hostile.count")
    task = draw(st.one_of(count, count, count, st.just("hostile.unknown"), st.text(max_size=12)))
    headers = task_headers(task)
    headers.update(draw(header_changes))
    for name in draw(st.lists(st.sampled_from(["id", "task", "root_id", "timelimit"]), max_size=2)):
        headers.pop(name, None)
    shape = draw(st.sampled_from(["valid", "valid", "embed", "args", "junk", "deep", "bytes", "huge"]))
    filler = draw(header_values)
    depth = draw(st.sampled_from([3, 50, 500, 5000]))
    content_type, encoding = draw(CONTENT_TYPES)
    raw = _shaped_body(key, shape, filler, depth)
    event(f"shape={shape} content_type={content_type}")
    return Envelope(RawMessage(raw, headers, content_type, encoding), key)


READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_not_finite(item) for item in value.values())
    if isinstance(value, list):
        return any(_not_finite(item) for item in value)
    return False


@pytest.mark.integration
@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
@given(envelope=envelopes())
def test_no_generated_envelope_stops_the_worker_or_leaves_its_caller_waiting(
    hostile: HostileWorker, envelope: Envelope
) -> None:
    """Whatever the envelope: the worker stays up and runs the next good message; the body
    runs at most once, and never for a refused message; a refused message naming a task
    id gets a FAILURE result with a MessageRejectedError (issue 15)."""
    message = envelope.message
    if hostile.broker.startswith("amqp") and (
        _not_finite(message.headers) or len(json.dumps(message.headers, default=str)) > 100_000
    ):
        # Unpublishable: RabbitMQ refuses NaN and infinities in headers (INTERNAL_ERROR), and
        # headers above its frame size (128 KiB) -- no worker ever sees such a message.
        reject()
    raw_id = message.headers.get("id")
    task_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 1024 else None
    rejected_before = hostile.metric(REJECTED)
    hostile.publish(message)

    # The worker is up and still works: the next good message runs.
    good = hostile.app.tasks["hostile.count"].delay(key=f"good-{uuid.uuid4().hex}")
    assert good.get(timeout=TIMEOUT) == 1, hostile.worker.log()[-3000:]
    assert hostile.worker.process is not None
    assert hostile.worker.process.poll() is None, hostile.worker.log()[-3000:]

    result = hostile.app.AsyncResult(task_id) if task_id is not None else None

    def settled() -> bool:
        if result is None:  # no usable id: refused, or run and counted by its key
            return hostile.metric(REJECTED) > rejected_before or hostile.count("runs", envelope.key) > 0
        return result.state in READY or hostile.count("attempts", result.id) > 0

    wait_until(settled, what=f"the message {message.headers!r:.300} to be refused or run")
    runs = hostile.count("runs", envelope.key)
    assert runs <= 1, "the body ran twice"
    if result is None:
        return
    attempts = hostile.count("attempts", result.id)
    assert attempts <= 1, "the message was delivered twice"
    if attempts == 0 and result.state != "REVOKED":  # refused before any task ran
        wait_until(lambda: result.state == "FAILURE", what="the refusal's FAILURE result")
        assert isinstance(result.result, MessageRejectedError), result.result
        assert runs == 0
        event(f"refused: {result.result.reason}")
    elif isinstance(result.result, MessageRejectedError):
        raise AssertionError(f"a message both refused and attempted: {result.result}")
    else:
        event(f"accepted: {result.state}")
