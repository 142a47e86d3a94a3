"""celery_kit.logging: structured lines, bound task context, propagation, redaction."""

from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest
import structlog
from celery import Celery
from pydantic import BaseModel, SecretStr

from celery_kit import PermanentError, dispatcher_for, instrument, uninstrument, validated_task
from celery_kit._context import CONTEXT_HEADER, ContextPropagation
from celery_kit._log_observer import LoggingObserver
from celery_kit.logging import configure_logging, json_dumps, propagate_context


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


class Login(BaseModel):
    user: str
    password: SecretStr


def test_stdlib_and_structlog_lines_are_json_with_bound_context(stream: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1")
    logging.getLogger("celery.worker").info("from celery %s", "itself")
    structlog.get_logger("app").warning("from structlog", n=3)
    first, second = lines(stream)
    assert (first["event"], first["logger"], first["level"], first["request_id"]) == (
        "from celery itself",
        "celery.worker",
        "info",
        "r-1",
    )
    assert (second["event"], second["n"], second["level"]) == ("from structlog", 3, "warning")
    assert "timestamp" in first


def test_console_mode_is_not_json() -> None:
    out = io.StringIO()
    configure_logging(json=False, stream=out)
    try:
        logging.getLogger("x").warning("readable")
        assert "readable" in out.getvalue()
        assert not out.getvalue().lstrip().startswith("{")
    finally:
        configure_logging(json=True, stream=io.StringIO())
        structlog.reset_defaults()


def test_task_context_is_bound_during_the_attempt_and_cleared_after(app: Celery, stream: io.StringIO) -> None:
    dispatcher_for(app).subscribe(LoggingObserver())
    seen: dict[str, Any] = {}

    @validated_task(app, shared=False, name="l.ctx")
    def ctx() -> None:
        seen.update(structlog.contextvars.get_contextvars())
        structlog.get_logger("inside").info("working")

    ctx.apply(task_id="t-1")
    assert seen["task_id"] == "t-1"
    assert seen["task_name"] == "l.ctx"
    assert seen["root_id"] == "t-1"
    assert structlog.contextvars.get_contextvars() == {}
    ours = [line for line in lines(stream) if line["logger"] in ("celery_kit.tasks", "inside")]
    assert [(line["event"], line.get("task_id")) for line in ours] == [
        ("task started", "t-1"),
        ("working", "t-1"),
        ("task succeeded", "t-1"),
    ]


def test_an_eager_task_gives_its_caller_its_context_back(app: Celery, stream: io.StringIO) -> None:
    """apply() runs inside the caller (a web request, a test): the caller's bound context
    survives the task, and the task sees only the propagated keys, as a worker would."""
    dispatcher_for(app).subscribe(LoggingObserver())
    seen: list[dict[str, Any]] = []

    @validated_task(app, shared=False, name="l.eager")
    def eager(depth: int) -> None:
        seen.append(structlog.contextvars.get_contextvars())
        structlog.contextvars.bind_contextvars(inside="leaks?")
        if depth:
            eager.apply((depth - 1,), task_id="inner")
            seen.append(structlog.contextvars.get_contextvars())

    structlog.contextvars.bind_contextvars(request_id="r-1", user="ada")
    try:
        eager.apply((1,), task_id="outer")
        assert structlog.contextvars.get_contextvars() == {"request_id": "r-1", "user": "ada"}
    finally:
        structlog.contextvars.clear_contextvars()
    outer, inner, outer_after_inner = seen
    assert (outer["task_id"], outer["request_id"]) == ("outer", "r-1")
    assert "user" not in outer  # not an allowlisted key: a worker would not see it either
    assert (inner["task_id"], inner["parent_id"]) == ("inner", "outer")
    assert "inside" not in inner
    assert outer_after_inner["task_id"] == "outer"
    assert outer_after_inner["inside"] == "leaks?"  # the outer attempt's own binding is back
    started = [line for line in lines(stream) if line["event"] == "task started"]
    assert [(line["task_id"], line.get("request_id")) for line in started] == [
        ("outer", "r-1"),
        ("inner", "r-1"),
    ]


def test_celerys_own_lines_carry_the_task_context(app: Celery, stream: io.StringIO) -> None:
    dispatcher_for(app).subscribe(LoggingObserver())
    trace = logging.getLogger("celery.app.trace")
    level = trace.level
    trace.setLevel(logging.INFO)  # instrument() silences its success line; not here

    @validated_task(app, shared=False, name="l.trace")
    def traced() -> None: ...

    try:
        traced.apply(task_id="t-2")
    finally:
        trace.setLevel(level)
    assert any(line["logger"] == "celery.app.trace" and line["task_id"] == "t-2" for line in lines(stream))


def test_instrument_leaves_a_producers_loggers_alone(app: Celery) -> None:
    """Quieting Celery's per-task lines is a worker-only change (the kit's lines replace
    them there); a web producer's logging configuration is its own."""
    loggers = [logging.getLogger(name) for name in ("celery.app.trace", "celery.worker.strategy")]
    levels = [logger.level for logger in loggers]
    instrument(app, metrics=False, alerts=None, health=False)
    try:
        assert [logger.level for logger in loggers] == levels
    finally:
        uninstrument(app)


def test_a_workers_take_over_quiets_celerys_duplicate_lines() -> None:
    from celery_kit._worker_logging import QUIETED_LOGGERS, take_over

    loggers = [logging.getLogger(name) for name in QUIETED_LOGGERS]
    levels = [logger.level for logger in loggers]
    out = io.StringIO()
    observer = LoggingObserver()
    try:
        take_over([observer], json=True, loglevel="INFO")
        assert [logger.getEffectiveLevel() for logger in loggers] == [logging.WARNING] * 2
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        _remove_kit_handlers()
        structlog.reset_defaults()
        logging.captureWarnings(False)
    del out


def _remove_kit_handlers() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]:
        root.removeHandler(handler)


def test_failures_and_retries_carry_their_classification(app: Celery, stream: io.StringIO) -> None:
    dispatcher_for(app).subscribe(LoggingObserver())

    @validated_task(app, shared=False, name="l.fails")
    def fails() -> None:
        raise PermanentError("record gone")

    fails.apply()
    (failed,) = [line for line in lines(stream) if line["event"] == "task failed"]
    assert failed["classification"] == "permanent"
    assert failed["final"] is True
    assert failed["exception_type"] == "PermanentError"
    assert failed["level"] == "error"


def test_payload_is_logged_only_on_opt_in_and_secrets_stay_masked(app: Celery, stream: io.StringIO) -> None:
    dispatcher_for(app).subscribe(LoggingObserver())

    @validated_task(app, shared=False, name="l.quiet")
    def quiet(login: Login) -> None: ...

    @validated_task(app, shared=False, name="l.loud", log_payload=True)
    def loud(login: Login) -> None: ...

    quiet.apply(kwargs={"user": "ada", "password": "s3cr3t-value"})
    loud.apply(kwargs={"user": "ada", "password": "s3cr3t-value"})
    finished = [line for line in lines(stream) if line["event"] == "task succeeded"]
    assert "payload" not in finished[0]
    assert finished[1]["payload"] == {"user": "ada", "password": "**********"}
    assert "s3cr3t-value" not in stream.getvalue()


def test_only_allowlisted_json_safe_context_is_propagated() -> None:
    propagation = ContextPropagation(["request_id", "correlation_id", "tenant"])
    try:
        structlog.contextvars.bind_contextvars(request_id="r-9", tenant={"nested": 1}, secret="x")
        headers: dict[str, Any] = {}
        propagation.stamp_headers(headers)
        context = headers[CONTEXT_HEADER]
        assert context["request_id"] == "r-9"
        assert "secret" not in context
        assert "tenant" not in context  # not JSON-scalar
        assert len(context["correlation_id"]) == 32  # generated when the producer had none
    finally:
        structlog.contextvars.clear_contextvars()


def test_hostile_context_headers_are_sanitised() -> None:
    safe = ContextPropagation().safe
    assert safe("not a dict") == {}
    assert safe({"request_id": ["x"], "other": "y"}) == {}
    assert safe({"request_id": "x" * 10_000})["request_id"] == "x" * 256


def test_each_app_propagates_its_own_keys(app: Celery) -> None:
    """A second app's log_context never changes the first's (they were module globals)."""
    other = Celery("other", broker="memory://", set_as_current=False)
    first = instrument(app, metrics=False, alerts=None, health=False)
    second = instrument(other, metrics=False, alerts=None, health=False, log_context=("tenant",))
    try:
        assert first.context is not None
        assert second.context is not None
        assert first.context.keys == {"request_id", "correlation_id"}
        assert second.context.keys == {"tenant"}
        propagate_context(["request_id", "trace"])  # the default: only apps that chose none
        assert first.context.keys == {"request_id", "trace"}
        assert second.context.keys == {"tenant"}
        propagate_context(["x"], app=other)
        assert first.context.keys == {"request_id", "trace"}
        assert second.context.keys == {"x"}
    finally:
        propagate_context()
        uninstrument(other)
        uninstrument(app)


def test_worker_lines_are_structlogs_production_chain(app: Celery) -> None:
    """In a worker the lifecycle lines come from structlog's own logger (no copies of its
    internals), in the same JSON shape as the standard library's records."""
    import re

    from celery_kit._worker_logging import QUIETED_LOGGERS, take_over

    levels = [logging.getLogger(name).level for name in QUIETED_LOGGERS]
    out = io.StringIO()
    observer = LoggingObserver()
    dispatcher_for(app).subscribe(observer)

    @validated_task(app, shared=False, name="l.worker")
    def work(n: int) -> int:
        logging.getLogger("celery.app.trace").error("from celery")
        return n

    class Stderr(io.StringIO):
        pass

    import sys as _sys

    saved = _sys.stderr
    _sys.stderr = out
    try:
        take_over([observer], json=True, loglevel="INFO")
        work.apply((1,), task_id="w-1")
        logging.getLogger("celery_kit.tasks").debug("never written")
    finally:
        _sys.stderr = saved
        for name, level in zip(QUIETED_LOGGERS, levels, strict=True):
            logging.getLogger(name).setLevel(level)
        _remove_kit_handlers()
        structlog.reset_defaults()
        logging.captureWarnings(False)
        dispatcher_for(app).unsubscribe(observer)
    got = lines(out)
    assert [line["event"] for line in got] == ["task started", "from celery", "task succeeded"]
    started, celery_line, succeeded = got
    assert started["logger"] == succeeded["logger"] == "celery_kit.tasks"
    assert celery_line["logger"] == "celery.app.trace"
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
    for line in got:
        assert iso.match(line["timestamp"]), line
        assert line["task_id"] == "w-1"  # the bound context, merged into every line
    assert (started["level"], celery_line["level"]) == ("info", "error")
    assert isinstance(succeeded["duration_seconds"], float)
    assert isinstance(observer.lines, structlog.typing.BindableLogger) or hasattr(observer.lines, "bind")


def test_json_lines_are_written_whatever_the_content() -> None:
    """orjson renders the common case; what it refuses falls back to the standard
    library's encoder, so no line is ever lost to its content."""
    import importlib.util
    import platform

    class Custom:
        def __repr__(self) -> str:
            return "<custom>"

    render = structlog.processors.JSONRenderer(serializer=json_dumps)
    cases: list[tuple[dict[str, Any], str, Any]] = [
        ({"event": "x", "text": 'é\n"q"'}, "text", 'é\n"q"'),
        ({"event": "x", "big": 2**70}, "big", 2**70),  # beyond orjson's 64 bits
        ({"event": "x", "s": "\ud800"}, "s", "\ud800"),  # a lone surrogate: not UTF-8
        ({"event": "x", "counts": {1: 2}}, "counts", {"1": 2}),  # keys become strings
        ({"event": "x", "o": Custom()}, "o", "<custom>"),  # structlog's fallback: repr
    ]
    for event_dict, key, expected in cases:
        line = render(None, "info", event_dict)
        assert isinstance(line, str)
        assert "\n" not in line
        assert json.loads(line)[key] == expected
    if platform.python_implementation() == "CPython":
        assert importlib.util.find_spec("orjson") is not None, "orjson is a dependency on CPython"
        assert json.loads(render(None, "info", {"v": float("nan")})) == {"v": None}  # standard JSON


def test_worker_logging_never_writes_into_a_redirected_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second ``setup_logging`` after Celery redirected stderr into logging (a forked pool
    process) must not point the handler at that proxy: every line would loop back."""
    from celery.utils.log import LoggingProxy

    from celery_kit._worker_logging import QUIETED_LOGGERS, take_over

    levels = [logging.getLogger(name).level for name in QUIETED_LOGGERS]
    monkeypatch.setattr(sys, "stderr", LoggingProxy(logging.getLogger("celery.redirected")))
    root = logging.getLogger()
    take_over([LoggingObserver()], json=True, loglevel="INFO")
    try:
        (handler,) = [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]
        assert isinstance(handler, logging.StreamHandler)
        assert handler.stream is sys.__stderr__
    finally:
        for name, level in zip(QUIETED_LOGGERS, levels, strict=True):
            logging.getLogger(name).setLevel(level)
        _remove_kit_handlers()
        structlog.reset_defaults()
        logging.captureWarnings(False)


def test_context_keys_that_name_a_log_record_attribute_do_not_lose_the_line(app: Celery) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("celery_kit.tasks")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the level of ``task enqueued``
    dispatcher_for(app).subscribe(observer := LoggingObserver())

    @validated_task(app, shared=False, name="l.record_keys")
    def work() -> None: ...

    structlog.contextvars.bind_contextvars(filename="report.csv", name="x", request_id="r-2")
    try:
        work.delay()
    finally:
        structlog.contextvars.clear_contextvars()
        logger.removeHandler(handler)
        logger.setLevel(level)
        dispatcher_for(app).unsubscribe(observer)
    (enqueued,) = [r for r in records if r.getMessage() == "task enqueued"]
    assert enqueued.task_name == "l.record_keys"  # type: ignore[attr-defined]
    assert enqueued.request_id == "r-2"  # type: ignore[attr-defined]
    assert enqueued.filename != "report.csv"  # the record's own attribute is kept


def test_an_eager_attempt_ended_by_a_base_exception_gives_the_context_back(app: Celery) -> None:
    from celery_kit import EventType, Observer, TaskEvent

    class Failed(Observer):
        def __init__(self) -> None:
            self.reasons: list[str] = []

        def on_failed(self, event: TaskEvent) -> None:
            self.reasons.append(event.reason)

    failed = Failed()
    dispatcher_for(app).subscribe(observer := LoggingObserver())
    dispatcher_for(app).subscribe(failed)

    @validated_task(app, shared=False, name="l.exits")
    def exits() -> None:
        raise SystemExit(3)

    structlog.contextvars.bind_contextvars(request_id="r-3")
    try:
        with pytest.raises(SystemExit):
            exits.apply()
        assert structlog.contextvars.get_contextvars() == {"request_id": "r-3"}
        assert failed.reasons == ["interrupted"]
        assert observer._callers == {}
    finally:
        structlog.contextvars.clear_contextvars()
        dispatcher_for(app).unsubscribe(observer)
        dispatcher_for(app).unsubscribe(failed)
    assert EventType.FAILED in Failed.event_types
