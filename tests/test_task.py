"""ValidatedTask and @validated_task, in-process: caller-side checks, eager retries, cleanup."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
import tenacity
from celery import Celery, chain, shared_task
from celery.exceptions import Ignore, Reject, SoftTimeLimitExceeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from celery_kit import (
    ConfigurationError,
    EventType,
    FailureKind,
    PayloadTooLargeError,
    PayloadValidationError,
    PermanentError,
    RetryPolicy,
    TaskEvent,
    ValidatedTask,
    dispatcher_for,
    validated_task,
)

from .conftest import decoded, published


class Email(BaseModel):
    to: str = Field(pattern=r".+@.+")
    subject: str
    body: str = ""


class Sent(BaseModel):
    message_id: str


def make_send(app: Celery, **options: Any) -> ValidatedTask:
    @validated_task(app, shared=False, name="t.send", **options)
    def send(payload: Email) -> Sent:
        return Sent(message_id=f"<{payload.to}>")

    return send


@pytest.fixture
def send(app: Celery) -> Any:
    return make_send(app)


def events_of(app: Celery) -> list[TaskEvent]:
    """The RETRYING and FAILED events ``app`` emits from now on."""
    seen: list[TaskEvent] = []

    @dispatcher_for(app).subscribe
    def record(event: TaskEvent) -> None:
        if event.type in (EventType.RETRYING, EventType.FAILED):
            seen.append(event)

    return seen


# -- caller side ------------------------------------------------------------------------------


def test_delay_publishes_the_validated_payload_as_plain_json(app: Celery) -> None:
    send = make_send(app)
    send.delay(to="a@b.c", subject="hi")
    send.delay(Email(to="a@b.c", subject="hi"))
    send.apply_async(({"to": "a@b.c", "subject": "hi"},))
    send.s(to="a@b.c", subject="hi").apply_async()
    send.si(Email(to="a@b.c", subject="hi")).delay()
    messages = published(app)
    assert len(messages) == 5
    for message in messages:
        assert message.content_type == "application/json"
        assert message.headers["task"] == "t.send"
        args, kwargs, _embed = decoded(message)
        assert (args, kwargs) == ([{"to": "a@b.c", "subject": "hi", "body": ""}], {})


@pytest.mark.parametrize(
    "send_it",
    [
        lambda t: t.delay(to="nope", subject="hi"),
        lambda t: t.apply_async(kwargs={"to": "a@b.c"}),
        lambda t: t.s(to="a@b.c", subject=["x"]).apply_async(),
        lambda t: t.si({"subject": "hi"}).delay(),
        lambda t: t.delay({"to": "a@b.c", "subject": "hi"}, "extra"),
        lambda t: chain(t.s(to="x", subject="y"), t.si(to="a@b.c", subject="z")).apply_async(),
    ],
)
def test_invalid_payload_raises_in_the_caller_and_publishes_nothing(app: Celery, send_it: Any) -> None:
    send = make_send(app)
    with pytest.raises(ValidationError):
        send_it(send)
    assert published(app) == []


def test_apply_runs_as_a_worker_would_and_direct_calls_raise(app: Celery) -> None:
    send = make_send(app)
    assert send.apply(kwargs={"to": "a@b.c", "subject": "hi"}).get() == {"message_id": "<a@b.c>"}
    assert send(to="a@b.c", subject="hi") == Sent(message_id="<a@b.c>")  # a direct call: the function's value
    refused = send.apply(kwargs={"to": "bad", "subject": "hi"})  # as on a worker: a FAILURE result
    assert refused.state == "FAILURE"
    assert isinstance(refused.result, PayloadValidationError)
    with pytest.raises(PayloadValidationError):
        send.apply(kwargs={"to": "bad", "subject": "hi"}, throw=True)  # Celery's eager propagation
    with pytest.raises(ValidationError):
        send(to="bad", subject="hi")


def test_typed_result_helpers(app: Celery) -> None:
    send = make_send(app)
    result = send.apply(args=(Email(to="a@b.c", subject="s"),))
    assert send.get_result(result) == Sent(message_id="<a@b.c>")
    assert send.parse_result({"message_id": "x"}) == Sent(message_id="x")


def test_pickle_is_refused(app: Celery) -> None:
    send = make_send(app)
    with pytest.raises(ConfigurationError, match="JSON only"):
        send.apply_async(kwargs={"to": "a@b.c", "subject": "s"}, serializer="pickle")
    pickled = make_pickled(app)
    with pytest.raises(ConfigurationError, match="refuses serializer 'pickle'"):
        pickled.delay(1)
    assert published(app) == []


def make_pickled(app: Celery) -> Any:
    @validated_task(app, shared=False, name="t.pickled", serializer="pickle")
    def pickled(n: int) -> int:
        return n

    return pickled


def test_payload_cap_from_app_setting_and_task_option(app: Celery) -> None:
    app.conf.celery_kit_max_payload_bytes = 200
    send = make_send(app)
    send.delay(to="a@b.c", subject="x" * 100)
    with pytest.raises(PayloadTooLargeError, match=r"t\.send"):
        send.delay(to="a@b.c", subject="x" * 300)
    assert len(published(app)) == 1

    @validated_task(app, shared=False, name="t.uncapped", max_payload_bytes=0)
    def uncapped(blob: str) -> int:
        return len(blob)

    uncapped.delay("y" * 10_000)
    assert len(published(app)) == 1


def test_default_cap_is_256_kib(app: Celery) -> None:
    send = make_send(app)
    with pytest.raises(PayloadTooLargeError) as caught:
        send.delay(to="a@b.c", subject="x" * 300_000)
    assert caught.value.limit == 256 * 1024


def test_celerys_argument_check_still_sees_the_real_signature(app: Celery) -> None:
    @validated_task(app, shared=False, name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    add.__header__(1, 2)
    with pytest.raises(TypeError):
        add.__header__(1, 2, 3)
    add.delay("1", y=2)
    ((args, kwargs, _),) = (decoded(m) for m in published(app))
    assert (args, kwargs) == ([1], {"y": 2})  # validated, and in the caller's shape
    assert list(inspect.signature(add.run).parameters) == ["x", "y"]
    with pytest.raises(TypeError, match="y\n  Field required") as missing:
        add.delay(1)  # a TypeError as in Celery, and a ValidationError as in the kit
    assert isinstance(missing.value, ValidationError)
    with pytest.raises(ValidationError):
        add.delay("x", 2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(
        st.sampled_from(["to", "subject", "body", "other"]),
        st.none() | st.integers() | st.text(max_size=30) | st.lists(st.integers(), max_size=3),
    )
)
def test_fuzzed_payloads_publish_only_when_valid(send: Any, fields: dict[str, Any]) -> None:
    app = send.app
    try:
        Email.model_validate(fields, strict=False)  # the model's own config decides on extras
        expect_valid = True
    except ValidationError:
        expect_valid = False
    try:
        send.delay(**fields)
    except ValidationError:
        assert not expect_valid
        assert published(app) == []
    else:
        assert expect_valid
        assert len(published(app)) == 1


# -- registration -----------------------------------------------------------------------------


def test_soft_limit_must_be_below_the_hard_limit(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="must be below time_limit"):
        make_send(app, soft_time_limit=10, time_limit=10).name  # noqa: B018
    app.conf.task_soft_time_limit = 50

    @validated_task(app, shared=False, name="t.limits", time_limit=20)
    def limits() -> None: ...

    with pytest.raises(ConfigurationError, match="soft_time_limit=50 must be below time_limit=20"):
        limits.name  # noqa: B018  -- forces the lazy task to register


def test_task_without_time_limits_warns_once_naming_it(
    app: Celery, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.task_soft_time_limit = None
    app.conf.task_time_limit = None
    name = f"t.unlimited-{unique}"
    with caplog.at_level(logging.WARNING, logger="celery_kit"):

        @validated_task(app, shared=False, name=name)
        def unlimited() -> None: ...

        unlimited.name  # noqa: B018
        app.tasks[name].bind(app)
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1
    assert "no soft_time_limit or time_limit" in warnings[0].getMessage()


def test_retry_option_becomes_the_policy_and_keeps_task_retry(app: Celery) -> None:
    policy = RetryPolicy(retry_on=(OSError,), max_retries=7)
    send = make_send(app, retry=policy)
    assert send.retry_policy is policy
    assert send.max_retries == 7
    assert callable(send.retry)

    @app.task(base=ValidatedTask, shared=False, name="t.base_retry", retry=policy)  # type: ignore[untyped-decorator]
    def via_app_task(n: int) -> int:
        return n

    assert via_app_task.retry_policy is policy
    assert callable(via_app_task.retry)


def test_contradicting_max_retries_is_refused(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="contradicts"):
        make_send(app, retry=RetryPolicy(retry_on=(OSError,), max_retries=2), max_retries=5).name  # noqa: B018


def test_pydantic_true_keeps_celerys_own_validation(app: Celery) -> None:
    send = make_send(app, pydantic=True, pydantic_strict=True)
    assert send.payload_schema is not None
    assert not send.payload_schema.validates
    send.delay(Email(to="a@b.c", subject="hi"))  # Celery's dump_arguments sends the model's JSON
    ((args, kwargs, _),) = (decoded(m) for m in published(app))
    assert (args, kwargs) == ([{"to": "a@b.c", "subject": "hi", "body": ""}], {})
    assert send.apply(({"to": "a@b.c", "subject": "hi"},)).get() == {"message_id": "<a@b.c>"}
    # pydantic_strict=True is Celery's option: a string for a model is refused on the worker.
    outcome = send.apply(('{"to": "a@b.c"}',))
    assert isinstance(outcome.result, ValidationError)


def test_base_must_be_a_validated_task(app: Celery) -> None:
    with pytest.raises(ConfigurationError, match="must subclass ValidatedTask"):
        validated_task(app, base=object)


def test_class_based_subclass(app: Celery) -> None:
    class Shout(ValidatedTask):
        name = "t.shout"

        def run(self, message: str, times: int = 1) -> str:
            return f"{message.upper()}{'!' * times}"

    task = app.register_task(Shout())
    assert task.apply(("hi",), {"times": "3"}).get() == "HI!!!"
    with pytest.raises(ValidationError):
        task.delay("hi", times="many")
    assert published(app) == []


def test_without_an_app_it_is_a_shared_task(unique: str) -> None:
    name = f"t.shared-{unique}"

    @validated_task(name=name)
    def shared(n: int) -> int:
        return n * 2

    other = Celery(f"other-{unique}", broker="memory://", set_as_current=False)
    other.finalize()
    assert isinstance(other.tasks[name], ValidatedTask)
    assert other.tasks[name].apply(("4",)).get() == 8
    assert shared_task  # the decorator it stands in for


def test_bare_decorator(unique: str) -> None:
    @validated_task
    def bare(n: int) -> int:
        return n + 1

    # Like shared_task: registered on every app finalized from now on.
    other = Celery(f"bare-{unique}", broker="memory://", set_as_current=False)
    other.finalize()
    task = other.tasks["tests.test_task.bare"]
    assert isinstance(task, ValidatedTask)
    assert task("1") == 2


# -- worker side, eagerly ---------------------------------------------------------------------


def test_run_rejects_a_bad_message_with_payload_validation_error(app: Celery) -> None:
    send = make_send(app)
    seen = events_of(app)
    # Celery's tracer calls run() directly with the message's arguments.
    result = send.AsyncResult("x")
    from celery.app.trace import build_tracer

    tracer = build_tracer(send.name, send, eager=True, app=app)
    outcome = tracer("task-1", [{"to": "bad"}], {}, {"id": "task-1"})
    assert isinstance(outcome.retval.exception, PayloadValidationError)
    assert outcome.retval.exception.errors[0]["loc"] == ["to"]
    assert [(e.type, e.kind, e.final) for e in seen] == [
        (EventType.FAILED, FailureKind.INVALID_PAYLOAD, True)
    ]
    assert result.id == "x"


def flaky_task(app: Celery, fail_times: int, **options: Any) -> tuple[ValidatedTask, list[int]]:
    calls: list[int] = []

    @validated_task(app, shared=False, name="t.flaky", **options)
    def flaky(n: int) -> int:
        calls.append(n)
        if len(calls) <= fail_times:
            raise ConnectionError(f"attempt {len(calls)}")
        return len(calls)

    return flaky, calls


def test_transient_errors_are_retried_then_succeed(app: Celery) -> None:
    flaky, calls = flaky_task(app, 2, retry=RetryPolicy(retry_on=ConnectionError, max_retries=3))
    seen = events_of(app)
    assert flaky.apply((1,)).get() == 3
    assert calls == [1, 1, 1]
    assert [(e.type, e.retries, e.final) for e in seen] == [
        (EventType.RETRYING, 0, False),
        (EventType.RETRYING, 1, False),
    ]
    assert all(e.delay is not None and e.delay >= 0 for e in seen)


def test_exhausted_retries_are_reported_as_final_exactly_once(app: Celery) -> None:
    flaky, calls = flaky_task(app, 99, retry=RetryPolicy(retry_on=ConnectionError, max_retries=2))
    seen = events_of(app)
    result = flaky.apply((1,))
    assert isinstance(result.result, ConnectionError)
    assert len(calls) == 3
    finals = [e for e in seen if e.final]
    assert len(finals) == 1
    assert (finals[0].kind, finals[0].reason, finals[0].retries) == (
        FailureKind.TRANSIENT,
        "retries exhausted",
        2,
    )


def test_deadline_stops_retrying(app: Celery) -> None:
    policy = RetryPolicy(retry_on=ConnectionError, max_retries=None, deadline=1, wait=tenacity.wait_fixed(5))
    flaky, calls = flaky_task(app, 99, retry=policy)
    seen = events_of(app)
    flaky.apply((1,))
    assert len(calls) == 1
    assert [(e.final, e.reason) for e in seen] == [(True, "deadline")]


@pytest.mark.parametrize("error", [PermanentError("gone"), ValueError("not listed")])
def test_permanent_and_unlisted_errors_are_not_retried(app: Celery, error: Exception) -> None:
    calls: list[int] = []

    @validated_task(app, shared=False, name="t.fails", retry=RetryPolicy(retry_on=ConnectionError))
    def fails() -> None:
        calls.append(1)
        raise error

    seen = events_of(app)
    assert fails.apply().result is error
    assert calls == [1]
    assert [(e.kind, e.final) for e in seen] == [(FailureKind.PERMANENT, True)]


def test_autoretry_for_keeps_celerys_rules_and_never_retries_validation_errors(app: Celery) -> None:
    flaky, calls = flaky_task(
        app, 5, autoretry_for=(Exception,), retry_kwargs={"max_retries": 2, "countdown": 0}
    )
    assert flaky.retry_policy is None  # Celery's options stay Celery's
    seen = events_of(app)
    outcome = flaky.apply((1,))
    assert isinstance(outcome.result, ConnectionError)
    assert calls == [1, 1, 1]  # retry_kwargs' max_retries=2, as in Celery
    assert [(e.type, e.final, e.reason) for e in seen] == [
        (EventType.RETRYING, False, "retriable error"),
        (EventType.RETRYING, False, "retriable error"),
        (EventType.FAILED, True, "retries exhausted"),
    ]

    from celery.app.trace import build_tracer

    seen.clear()
    tracer = build_tracer(flaky.name, flaky, eager=True, app=app)
    result = tracer("task-2", ["not-a-number"], {}, {"id": "task-2"})
    assert isinstance(result.retval.exception, PayloadValidationError)
    assert [(e.type, e.final) for e in seen] == [(EventType.FAILED, True)]


def test_dont_autoretry_for_and_a_retry_max_retries_override(app: Celery) -> None:
    calls: list[str] = []

    @validated_task(
        app, shared=False, name="t.picky", bind=True, max_retries=5,
        autoretry_for=(Exception,), dont_autoretry_for=(KeyError,), default_retry_delay=0,
    )  # fmt: skip
    def picky(self: ValidatedTask, error: str) -> None:
        calls.append(error)
        if error == "override" and not self.request.retries:
            self.retry(max_retries=1, countdown=0, throw=False)  # lowers the limit for autoretry
        raise KeyError(error) if error == "key" else ValueError(error)

    assert isinstance(picky.apply(("key",)).result, KeyError)
    assert calls == ["key"]
    calls.clear()
    assert isinstance(picky.apply(("override",)).result, ValueError)
    assert calls == ["override", "override"]  # one retry: the override, not max_retries=5


def test_autoretry_without_a_limit_is_celerys_choice(app: Celery) -> None:
    flaky, calls = flaky_task(app, 7, autoretry_for=(OSError,), max_retries=None, retry_backoff=-1)
    with_jitter_off = flaky.apply((1,))  # retry_backoff=-1 means a factor of 1 in Celery
    assert with_jitter_off.get() == 8
    assert len(calls) == 8


# -- soft-timeout cleanup -----------------------------------------------------------------------


def timing_out(app: Celery, **options: Any) -> tuple[ValidatedTask, list[int]]:
    calls: list[int] = []

    @validated_task(app, shared=False, name="t.slow", **options)
    def slow(payload: Email) -> None:
        calls.append(1)
        raise SoftTimeLimitExceeded()  # what the prefork pool raises inside the task

    return slow, calls


def test_soft_timeout_runs_every_hook_once_then_fails(app: Celery) -> None:
    slow, _ = timing_out(app)
    cleaned: list[Any] = []
    slow.on_soft_timeout(cleaned.append)
    slow.on_soft_timeout(lambda payload, request: cleaned.append(request.id))
    seen = events_of(app)
    result = slow.apply(kwargs={"to": "a@b.c", "subject": "s"}, task_id="t-1")
    assert isinstance(result.result, SoftTimeLimitExceeded)
    assert cleaned == [Email(to="a@b.c", subject="s"), "t-1"]
    assert [(e.kind, e.final) for e in seen] == [(FailureKind.TIMEOUT, True)]


def test_a_failing_cleanup_is_logged_and_does_not_hide_the_timeout(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    slow, _ = timing_out(app)

    @slow.on_soft_timeout
    def broken(payload: Email) -> None:
        raise RuntimeError("cleanup broke")

    with caplog.at_level(logging.ERROR, logger="celery_kit"):
        result = slow.apply(kwargs={"to": "a@b.c", "subject": "s"})
    assert isinstance(result.result, SoftTimeLimitExceeded)
    assert any("soft-timeout cleanup" in r.getMessage() and r.exc_info for r in caplog.records)


def test_subclass_can_override_on_soft_timeout(app: Celery) -> None:
    cleaned: list[Email] = []

    class Cleaning(ValidatedTask):
        def on_soft_timeout(self, payload: Any) -> Any:
            cleaned.append(payload)

    slow, _ = timing_out(app, base=Cleaning)
    slow.apply(kwargs={"to": "a@b.c", "subject": "s"})
    assert cleaned == [Email(to="a@b.c", subject="s")]


def test_retry_on_timeout_retries_after_the_cleanup(app: Celery) -> None:
    slow, calls = timing_out(app, retry=RetryPolicy(retry_on=(), max_retries=2, retry_on_timeout=True))
    cleaned: list[int] = []
    slow.on_soft_timeout(lambda payload: cleaned.append(1))
    slow.apply(kwargs={"to": "a@b.c", "subject": "s"})
    assert calls == [1, 1, 1]
    assert cleaned == [1, 1, 1]


def test_app_given_as_a_keyword_registers_on_that_app_only(app: Celery, unique: str) -> None:
    @validated_task(app=app, shared=False, name=f"t.kw-{unique}")
    def doubled(n: int) -> int:
        return n * 2

    assert isinstance(app.tasks[f"t.kw-{unique}"], ValidatedTask)
    assert doubled.apply(("3",)).get() == 6
    other = Celery(f"other-kw-{unique}", broker="memory://", set_as_current=False)
    other.finalize()
    assert f"t.kw-{unique}" not in other.tasks  # not a shared_task in disguise


@pytest.mark.parametrize(
    ("raised", "state"),
    [
        (Ignore(), "IGNORED"),
        (Reject("bad", requeue=False), "REJECTED"),
        (SoftTimeLimitExceeded(), "FAILURE"),
    ],
)
def test_control_flow_and_soft_timeouts_are_never_retried_even_when_everything_is(
    app: Celery, raised: Exception, state: str
) -> None:
    calls: list[int] = []

    @validated_task(
        app, shared=False, name="t.control", retry=RetryPolicy(retry_on=(Exception,), max_retries=5)
    )
    def control() -> None:
        calls.append(1)
        raise raised

    seen = events_of(app)
    result = control.apply()
    assert result.state == state
    assert calls == [1]
    assert not [e for e in seen if e.type is EventType.RETRYING]


def test_bytes_json_cannot_carry_raise_a_validation_error_and_publish_nothing(app: Celery) -> None:
    @validated_task(app, shared=False, name="t.blob")
    def blob(data: dict[str, bytes]) -> None: ...

    refused: list[TaskEvent] = []
    dispatcher_for(app).subscribe(
        lambda event: refused.append(event) if event.type is EventType.REFUSED else None
    )
    with pytest.raises(ValidationError, match="cannot be encoded as JSON"):
        blob.delay({"raw": b"\xff\xfe"})
    assert published(app) == []
    assert [e.task_name for e in refused] == ["t.blob"]


# -- drop-in: an existing Celery task keeps Celery's behaviour ----------------------------------


@pytest.fixture
def plain_app(unique: str) -> Any:
    app = Celery(
        f"plain-{unique}",
        broker="memory://",
        backend="cache+memory://",
        task_cls="celery_kit:ValidatedTask",
        set_as_current=False,
    )
    app.conf.task_default_queue = f"q-{unique}"
    yield app
    app.close()


def test_retry_merges_args_and_kwargs_as_celery_does(plain_app: Celery) -> None:
    @plain_app.task(bind=True, shared=False)  # type: ignore[untyped-decorator]
    def scale(self: Any, foo: Any, bar: Any) -> Any:
        if not self.request.retries:
            raise self.retry(kwargs={"foo": foo * 10}, countdown=0)
        return foo, bar

    @plain_app.task(bind=True, shared=False)  # type: ignore[untyped-decorator]
    def shift(self: Any, foo: int, bar: int) -> Any:
        if not self.request.retries:
            raise self.retry(args=(foo * 10,), countdown=0)
        return foo, bar

    assert scale.apply((1, 2)).get() == (10, 2)
    assert shift.apply((1,), {"bar": 2}).get() == (10, 2)


def test_max_retries_exceeded_carries_the_tasks_arguments(plain_app: Celery) -> None:
    from celery.exceptions import MaxRetriesExceededError

    @plain_app.task(bind=True, shared=False, max_retries=0)  # type: ignore[untyped-decorator]
    def once(self: Any, a: int, b: int) -> None:
        raise self.retry(countdown=0)

    outcome = once.apply((1, 2))
    assert isinstance(outcome.result, MaxRetriesExceededError)
    assert tuple(outcome.result.task_args) == (1, 2)


def test_undeclared_values_are_sent_as_celery_sends_them(plain_app: Celery) -> None:
    from kombu.exceptions import EncodeError

    @plain_app.task(shared=False)
    def pair(x):  # type: ignore[no-untyped-def]
        return (x, x)

    assert pair.apply((1,)).get() == (1, 1)  # a tuple stays a tuple
    with pytest.raises(EncodeError):
        pair.delay({1, 2})  # kombu's JSON refuses a set, as without the kit
    assert published(plain_app) == []


def test_typing_false_and_strict_typing_false_turn_the_callers_checks_off(plain_app: Celery) -> None:
    @plain_app.task(shared=False, typing=False)  # type: ignore[untyped-decorator]
    def loose(x: int, y: int) -> None: ...

    loose.delay(1)  # Celery sends it; the worker will refuse it
    loose.delay("x", 2)
    assert len(published(plain_app)) == 2
    lax = Celery("lax", broker="memory://", task_cls="celery_kit:ValidatedTask", strict_typing=False)

    @lax.task(shared=False)  # type: ignore[untyped-decorator]
    def later(x: int) -> None: ...

    assert later.typing is False
    later.delay()


def test_arguments_celery_refuses_keep_celerys_type_error(plain_app: Celery) -> None:
    @plain_app.task(shared=False)  # type: ignore[untyped-decorator]
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match="list or tuple"):
        add.apply_async("ab")
    with pytest.raises(TypeError, match="mapping"):
        add.apply_async((1, 2), "ab")
    with pytest.raises(TypeError, match="z\n  Extra inputs are not permitted"):
        add.delay(1, 2, z=3)

    @plain_app.task(shared=False)
    def untyped(x, y):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        untyped.delay(1, 2, z=3)  # a task that declares nothing: Celery's own check and message
    assert published(plain_app) == []


def test_a_retry_that_does_not_fit_is_not_blamed_on_a_previous_result(app: Celery) -> None:
    @validated_task(app, shared=False, name="t.reretry", bind=True)
    def reretry(self: ValidatedTask, n: int) -> None: ...

    reretry.push_request(
        id="t-1",
        args=(1,),
        kwargs={},
        retries=0,
        is_eager=False,
        called_directly=False,
        parent_id="p-1",
        root_id="r-1",  # as on a worker: a retry carries the ids too
    )
    try:
        with pytest.raises(ValidationError) as caught:  # refused before anything is sent
            reretry.retry(kwargs={"n": "not-a-number"}, countdown=0)
    finally:
        reretry.pop_request()
    assert not isinstance(caught.value, PayloadValidationError)  # not "the previous task's result"
    assert published(app) == []

    class Counted(ValidatedTask):
        name = "t.counted"

        def run(self, n: int) -> None: ...

    counted = app.register_task(Counted())
    counted.push_request(
        id="t-2", args=(1,), kwargs={}, retries=0, is_eager=False, called_directly=False,
        parent_id="p-2", root_id="r-2",
    )  # fmt: skip
    try:
        with pytest.raises(Reject) as rejected:  # Celery's retry(): a publish that fails is a Reject
            counted.retry(args=(), kwargs={}, countdown=0)
    finally:
        counted.pop_request()
    assert isinstance(rejected.value.reason, TypeError)  # the missing n: the call's shape
    assert not isinstance(rejected.value.reason, PayloadValidationError)
