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

from celery_kit import PermanentError, dispatcher_for, validated_task
from celery_kit.logging import (
    CONTEXT_HEADER,
    LoggingObserver,
    _inject_context,
    _safe_context,
    configure_logging,
    propagate_context,
)


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


def test_instrument_silences_celerys_duplicate_success_line(app: Celery, stream: io.StringIO) -> None:
    from celery_kit import instrument

    loggers = [logging.getLogger(name) for name in ("celery.app.trace", "celery.worker.strategy")]
    levels = [logger.level for logger in loggers]
    try:
        instrument(app, metrics=False, alerts=None)
        assert [logger.getEffectiveLevel() for logger in loggers] == [logging.WARNING] * 2
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


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
    propagate_context(["request_id", "correlation_id", "tenant"])
    try:
        structlog.contextvars.bind_contextvars(request_id="r-9", tenant={"nested": 1}, secret="x")
        headers: dict[str, Any] = {}
        _inject_context(headers=headers)
        context = headers[CONTEXT_HEADER]
        assert context["request_id"] == "r-9"
        assert "secret" not in context
        assert "tenant" not in context  # not JSON-scalar
        assert len(context["correlation_id"]) == 32  # generated when the producer had none
    finally:
        structlog.contextvars.clear_contextvars()
        propagate_context()


def test_hostile_context_headers_are_sanitised() -> None:
    assert _safe_context("not a dict") == {}
    assert _safe_context({"request_id": ["x"], "other": "y"}) == {}
    assert _safe_context({"request_id": "x" * 10_000})["request_id"] == "x" * 256


def test_lifecycle_lines_render_what_the_structlog_chain_renders() -> None:
    """The direct writer is a faster spelling of structlog's own chain, not another format."""
    import re

    from celery_kit import logging as kit_logging

    ours, theirs = io.StringIO(), io.StringIO()
    configure_logging(json=True, level="INFO", stream=ours)
    reference = structlog.wrap_logger(
        structlog.WriteLogger(theirs),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            lambda _, __, event_dict: {**event_dict, "logger": "celery_kit.tasks"},
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    class Custom:
        def __repr__(self) -> str:
            return "<custom>"

    try:
        structlog.contextvars.bind_contextvars(request_id="r-1", odd=Custom(), text="é\n")
        for logger in (kit_logging.log, reference):
            logger.info("task started", queue_wait_seconds=None)
            logger.warning("task retrying", delay_seconds=1.5, reason="x")
            logger.log(logging.ERROR, "task failed", exc_info=ValueError("boom"), final=True)
            logger.debug("never written")
    finally:
        structlog.contextvars.clear_contextvars()
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]:
            root.removeHandler(handler)
        structlog.reset_defaults()
    got, want = lines(ours), lines(theirs)
    assert len(got) == len(want) == 3
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
    for mine, reference_line in zip(got, want, strict=True):
        assert iso.match(mine.pop("timestamp"))
        assert iso.match(reference_line.pop("timestamp"))
        assert mine == reference_line
    assert got[2]["exception"][0]["exc_type"] == "ValueError"


def test_json_lines_are_written_whatever_the_content() -> None:
    """orjson renders the common case; what it refuses falls back to the standard
    library's encoder, so no line is ever lost to its content."""
    import importlib.util
    import platform

    from celery_kit import logging as kit_logging

    class Custom:
        def __repr__(self) -> str:
            return "<custom>"

    render = kit_logging._JSONRenderer()
    cases: list[tuple[dict[str, Any], str, Any]] = [
        ({"event": "x", "text": 'é\n"q"'}, "text", 'é\n"q"'),
        ({"event": "x", "big": 2**70}, "big", 2**70),  # beyond orjson's 64 bits
        ({"event": "x", "s": "\ud800"}, "s", "\ud800"),  # a lone surrogate: not UTF-8
        ({"event": "x", "counts": {1: 2}}, "counts", {"1": 2}),  # keys become strings
        ({"event": "x", "o": Custom()}, "o", "<custom>"),  # structlog's fallback: repr
    ]
    for event_dict, key, expected in cases:
        line = render(None, "info", event_dict)
        assert "\n" not in line
        assert json.loads(line)[key] == expected
    if platform.python_implementation() == "CPython":
        assert importlib.util.find_spec("orjson") is not None, "orjson is a dependency on CPython"
        assert json.loads(render(None, "info", {"v": float("nan")})) == {"v": None}  # standard JSON
    assert render.render_standard({"v": float("nan")}) == '{"v": NaN}'


def test_task_context_binding_matches_structlogs_bind_and_clear() -> None:
    from celery_kit.logging import _bind_task_context, _clear_contextvars

    try:
        structlog.contextvars.bind_contextvars(leftover="x")
        _clear_contextvars()
        assert structlog.contextvars.get_contextvars() == {}
        for task_id in ("t-1", "t-2"):  # the second call takes the cached path
            _bind_task_context(task_id, "name", "q", 0, None, task_id)
            assert structlog.contextvars.get_contextvars() == {
                "task_id": task_id,
                "task_name": "name",
                "queue": "q",
                "retries": 0,
                "parent_id": None,
                "root_id": task_id,
            }
        _clear_contextvars()
        assert structlog.contextvars.get_contextvars() == {}
    finally:
        structlog.contextvars.clear_contextvars()


def test_timestamps_have_the_iso_format_of_structlogs_stamper(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery_kit.logging import _UTCTimestamp

    stamp = _UTCTimestamp()
    monkeypatch.setattr("time.time_ns", lambda: 1_700_000_000_000_000_000)
    assert stamp(None, "info", {})["timestamp"] == "2023-11-14T22:13:20Z"  # isoformat drops a zero fraction
    monkeypatch.setattr("time.time_ns", lambda: 1_700_000_000_123_456_789)
    assert stamp(None, "info", {})["timestamp"] == "2023-11-14T22:13:20.123456Z"
    monkeypatch.setattr("time.time_ns", lambda: 1_700_000_001_000_001_000)
    assert stamp(None, "info", {})["timestamp"] == "2023-11-14T22:13:21.000001Z"


def test_worker_logging_never_writes_into_a_redirected_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second ``setup_logging`` after Celery redirected stderr into logging (a forked pool
    process) must not point the handler at that proxy: every line would loop back."""
    from celery import signals
    from celery.utils.log import LoggingProxy

    from celery_kit.logging import _configure_worker_logging

    monkeypatch.setattr(sys, "stderr", LoggingProxy(logging.getLogger("celery.redirected")))
    root = logging.getLogger()
    _configure_worker_logging(loglevel="INFO")
    try:
        (handler,) = [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]
        assert isinstance(handler, logging.StreamHandler)
        assert handler.stream is sys.__stderr__
    finally:
        for installed in [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]:
            root.removeHandler(installed)
        structlog.reset_defaults()
        logging.captureWarnings(False)
        signals.celeryd_after_setup.disconnect(dispatch_uid="celery_kit.banner")
