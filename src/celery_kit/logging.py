"""Structured logs with structlog: one JSON line per event, context that follows a task.

* :func:`configure_logging` routes the standard library's logging -- Celery's own
  loggers and ``get_task_logger`` included -- and structlog through one renderer:
  JSON lines in production, a readable console in a terminal.
* :class:`LoggingObserver` reads the app's task events: it binds ``task_id``,
  ``task_name``, ``queue``, ``retries``, ``parent_id`` and ``root_id`` when an attempt
  starts, logs each lifecycle step once, and clears the context when the attempt ends,
  so nothing leaks from one task into the next.
* Producer to worker: an allowlisted, JSON-safe part of the producer's structlog
  context (``request_id``, ``correlation_id`` by default) travels in one message header
  and is bound on the worker, so a web request's id appears in the worker's lines and a
  chain keeps one ``correlation_id`` end to end.

Payload values are never logged unless a task opts in with ``log_payload=True``; even
then secrets are masked by the kit's one redactor (``SecretStr``/``SecretBytes`` fields,
fields named like a password, token or key, URL passwords), as in alerts and
``celery kit config``.
"""

from __future__ import annotations

import contextvars
import logging as std_logging
import sys
import time
import uuid
from collections.abc import Callable, Iterable, MutableMapping, Sequence
from datetime import datetime, timezone
from json import JSONEncoder
from json import encoder as json_encoder
from typing import IO, Any, TextIO, cast

import structlog
from celery import signals
from celery.utils.log import LoggingProxy

try:
    import orjson as _orjson
except ImportError:  # not built for every interpreter (PyPy): the standard library's encoder
    _orjson = None  # type: ignore[assignment]

from . import _worker_output
from ._events import EventType, FailureKind, TaskEvent, request_value
from ._payload import dump_masked
from ._redact import redact

__all__ = [
    "CONTEXT_HEADER",
    "DEFAULT_PROPAGATED_KEYS",
    "LoggingObserver",
    "configure_logging",
    "propagate_context",
]

#: Message header carrying the propagated structlog context.
CONTEXT_HEADER = "celery_kit_context"
DEFAULT_PROPAGATED_KEYS = ("request_id", "correlation_id")
_JSON_SCALARS = (str, int, float, bool, type(None))
#: Keys that are not strings (``log.info("x", counts={1: 2})``) are written as strings, as
#: the standard library's encoder writes them.
_ORJSON_OPTIONS = _orjson.OPT_NON_STR_KEYS if _orjson is not None else 0
_MAX_VALUE_LENGTH = 256

_propagated_keys: frozenset[str] = frozenset(DEFAULT_PROPAGATED_KEYS)
_handler_marker = "_celery_kit_handler"

_TASKS_LOGGER = "celery_kit.tasks"
#: The lifecycle lines' logger: structlog's own configuration until configure_logging()
#: installs a direct writer (the stdlib round trip costs several times more per line).
log: Any = structlog.get_logger(_TASKS_LOGGER)


# -- per-line work: structlog's general processors, specialised to what is fixed here ----------
#
# Every task attempt writes two lines, so each of these runs twice per task. Each one
# writes exactly what the structlog processor it replaces writes.

#: structlog keeps each context key in its own ContextVar named with this prefix; an
#: unset (unbound, cleared) key holds ``...``.
_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LEN = len(_CONTEXT_PREFIX)


#: Each ContextVar seen in a context -> its structlog key, or ``""`` for a variable that
#: is not structlog's. Variables live as long as the process (structlog keeps one per
#: key, module-level ones are created once), so each name is parsed once.
_context_keys: dict[contextvars.ContextVar[Any], str] = {}


def _context_key(var: contextvars.ContextVar[Any]) -> str:
    name = var.name
    key = _context_keys[var] = name[_CONTEXT_PREFIX_LEN:] if name.startswith(_CONTEXT_PREFIX) else ""
    return key


def _merge_context(event_dict: MutableMapping[str, Any]) -> None:
    """``structlog.contextvars.merge_contextvars`` in one pass over the context."""
    keys = _context_keys
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis:
            key = keys.get(var)
            if key is None:
                key = _context_key(var)
            if key:
                event_dict.setdefault(key, value)


def _merge_contextvars(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``structlog.contextvars.merge_contextvars``, as a processor."""
    _merge_context(event_dict)
    return event_dict


def _set_context_vars() -> list[tuple[contextvars.ContextVar[Any], Any]]:
    """structlog's ContextVars that hold a value now, with it."""
    return [
        (var, value)
        for var, value in contextvars.copy_context().items()
        if value is not Ellipsis and var.name.startswith(_CONTEXT_PREFIX)
    ]


def _clear_contextvars() -> None:
    """``structlog.contextvars.clear_contextvars``, touching only the keys that are set."""
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and var.name.startswith(_CONTEXT_PREFIX):
            var.set(Ellipsis)


class _UTCTimestamp:
    """``TimeStamper(fmt="iso", utc=True)``, formatting the date and time once a second."""

    def __init__(self) -> None:
        # One tuple, replaced whole: a thread never pairs one second with another's text.
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        second, nanos = divmod(time.time_ns(), 1_000_000_000)
        cached = self._second
        if cached[0] != second:
            text = datetime.fromtimestamp(second, timezone.utc).replace(tzinfo=None).isoformat()
            cached = self._second = (second, text)
        micros = nanos // 1000
        # Like isoformat(), which leaves out a zero fraction.
        event_dict["timestamp"] = f"{cached[1]}.{micros:06d}Z" if micros else f"{cached[1]}Z"
        return event_dict


class _JSONRenderer:
    """Renders one JSON object per line, with structlog's fallback (``repr``) for other types.

    With orjson (installed with the kit on CPython) a line costs a fraction of the
    standard library's encoder: every task attempt writes two. Anything orjson refuses
    -- an int beyond 64 bits, a string with a lone surrogate -- is rendered by what
    ``structlog.processors.JSONRenderer()`` uses, ``json.dumps`` with that fallback (its
    encoder built once, not per line), so no line is ever lost to its content. orjson
    writes UTF-8 rather than ``\\u`` escapes, and ``NaN`` as ``null`` (standard JSON).
    """

    def __init__(self) -> None:
        captured: dict[str, Any] = {}

        def capture(_: Any, **options: Any) -> str:
            captured.update(options)
            return ""

        structlog.processors.JSONRenderer(serializer=capture)(None, "", {})
        default = captured.get("default")
        self._default = default
        self._encode = JSONEncoder(default=default).encode
        self._iterencode: Callable[[Any, int], Any] | None = None
        make = getattr(json_encoder, "c_make_encoder", None)
        if make is None:
            return
        try:  # check_circular=False keeps no per-call state: one encoder serves every thread
            iterencode = make(
                None, default, json_encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
            )
            probe = {"event": "é\n", "n": 1.5, "nan": float("nan"), "list": [None, "x"], "obj": object()}
            if "".join(iterencode(probe, 0)) == self._encode(probe):
                self._iterencode = iterencode
        except Exception:  # another interpreter's private encoder: keep the documented one
            pass

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> str:
        if _orjson is not None:
            try:
                return _orjson.dumps(event_dict, default=self._default, option=_ORJSON_OPTIONS).decode()
            except TypeError:  # orjson.JSONEncodeError: content it cannot write
                pass
        return self.render_standard(event_dict)

    def render_standard(self, event_dict: MutableMapping[str, Any]) -> str:
        """The standard library's rendering (``structlog.processors.JSONRenderer()``'s)."""
        iterencode = self._iterencode
        if iterencode is None:
            return self._encode(event_dict)
        return "".join(iterencode(event_dict, 0))


_LEVEL_NAMES = {
    std_logging.DEBUG: "debug",
    std_logging.INFO: "info",
    std_logging.WARNING: "warning",
    std_logging.ERROR: "error",
    std_logging.CRITICAL: "critical",
}


def _dict_tracebacks_if_any(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``dict_tracebacks``, called only when there is an ``exc_info`` (without one it does nothing)."""
    if "exc_info" in event_dict:
        return structlog.processors.dict_tracebacks(logger, method, event_dict)
    return event_dict


class _LineLogger:
    """The lifecycle lines' writer once :func:`configure_logging` ran.

    Writes what ``structlog.wrap_logger(WriteLogger(stream), processors=[merge_contextvars,
    add_log_level, <logger name>, <timestamp>, *renderers], wrapper_class=
    make_filtering_bound_logger(level))`` writes for the calls the observer makes (fields
    by keyword, no ``%`` interpolation): the first four steps inlined, and none of the
    bound-logger layers, which together cost more than rendering the line.
    """

    def __init__(
        self, stream: TextIO, level: int, timestamp: _UTCTimestamp, renderers: Sequence[Any]
    ) -> None:
        self._logger = structlog.WriteLogger(stream)
        self._level = level
        self._timestamp = timestamp
        self._renderers = tuple(
            _dict_tracebacks_if_any if r is structlog.processors.dict_tracebacks else r for r in renderers
        )

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        _merge_context(fields)
        fields["level"] = method  # add_log_level: the methods here are the level names
        fields["logger"] = _TASKS_LOGGER
        logger = self._logger
        line: Any = self._timestamp(logger, method, fields)
        try:
            for renderer in self._renderers:
                line = renderer(logger, method, line)
        except structlog.DropEvent:
            return
        logger.msg(line)

    def log(self, level: int, event: str, **fields: Any) -> None:
        if level >= self._level:
            self._emit(_LEVEL_NAMES.get(level) or std_logging.getLevelName(level).lower(), event, fields)

    def debug(self, event: str, **fields: Any) -> None:
        if self._level <= std_logging.DEBUG:
            self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self._level <= std_logging.INFO:
            self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        if self._level <= std_logging.WARNING:
            self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        if self._level <= std_logging.ERROR:
            self._emit("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        if self._level <= std_logging.CRITICAL:
            self._emit("critical", event, fields)


def configure_logging(
    json: bool | None = None,
    level: int | str = "INFO",
    *,
    stream: IO[str] | None = None,
) -> None:
    """Send every log line of the process, stdlib and structlog alike, through structlog.

    Args:
        json: JSON lines (``True``), a readable console (``False``), or ``None`` to pick
            JSON unless the stream is a terminal.
        level: root log level.
        stream: where lines go (default: standard error).

    Calling it again replaces the handler it installed; other handlers are left alone.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    timestamp = _UTCTimestamp()
    shared: list[Any] = [
        _merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamp,
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        final += [structlog.processors.dict_tracebacks, _JSONRenderer()]
    else:
        final.append(structlog.dev.ConsoleRenderer())
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    numeric_level = std_logging.getLevelName(level.upper()) if isinstance(level, str) else level
    global log
    log = _LineLogger(cast("TextIO", stream), numeric_level, timestamp, final[1:])
    handler = std_logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _handler_marker, True)
    root = std_logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _handler_marker, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())


def propagate_context(keys: Iterable[str] = DEFAULT_PROPAGATED_KEYS) -> None:
    """Choose which structlog context keys travel from producers to workers."""
    global _propagated_keys
    _propagated_keys = frozenset(keys)


def _safe_context(raw: Any) -> dict[str, Any]:
    """The allowlisted, JSON-safe part of ``raw``: anything else is dropped."""
    if not isinstance(raw, dict):
        return {}
    safe = {}
    for key, value in raw.items():
        if key in _propagated_keys and isinstance(value, _JSON_SCALARS):
            safe[key] = value[:_MAX_VALUE_LENGTH] if isinstance(value, str) else value
    return safe


def _propagated_context() -> dict[str, Any]:
    """``_safe_context(structlog.contextvars.get_contextvars())`` in one pass over the context."""
    safe = {}
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and isinstance(value, _JSON_SCALARS):
            name = var.name
            if name.startswith(_CONTEXT_PREFIX):
                key = name[_CONTEXT_PREFIX_LEN:]
                if key in _propagated_keys:
                    safe[key] = value[:_MAX_VALUE_LENGTH] if isinstance(value, str) else value
    return safe


def _inject_context(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None or not _propagated_keys:
        return
    context = _propagated_context()
    if "correlation_id" in _propagated_keys and "correlation_id" not in context:
        context["correlation_id"] = uuid.uuid4().hex
    headers[CONTEXT_HEADER] = context


def _exception_fields(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {}
    return {"exception_type": type(exc).__name__, "exception_message": str(exc)[:1000]}


#: What every attempt binds, in :func:`_bind_task_context`'s argument order.
_TASK_CONTEXT_KEYS = ("task_id", "task_name", "queue", "retries", "parent_id", "root_id")
_task_context_vars: tuple[contextvars.ContextVar[Any], ...] = ()


def _bind_task_context(*values: Any) -> None:
    """``bind_contextvars(task_id=..., task_name=..., ...)`` for :data:`_TASK_CONTEXT_KEYS`.

    The first call binds through structlog and keeps the ContextVars it binds (each
    ``Token.var``); later calls set those directly, skipping the per-key name building.
    """
    global _task_context_vars
    variables = _task_context_vars
    if variables:
        for variable, value in zip(variables, values, strict=True):
            variable.set(value)
        return
    tokens = structlog.contextvars.bind_contextvars(**dict(zip(_TASK_CONTEXT_KEYS, values, strict=True)))
    _task_context_vars = tuple(tokens[key].var for key in _TASK_CONTEXT_KEYS)


class LoggingObserver:
    """Logs each task lifecycle event once and keeps the task's context bound meanwhile."""

    def __init__(self) -> None:
        # Resolved once: the handler of each event type (``_on_<type>``), if any.
        self._handlers: dict[EventType, Callable[[TaskEvent], None]] = {
            kind: handler
            for kind in EventType
            if (handler := getattr(self, f"_on_{kind.value}", None)) is not None
        }

    def __call__(self, event: TaskEvent) -> None:
        handler = self._handlers.get(event.type)
        if handler is not None:
            handler(event)

    def _on_published(self, event: TaskEvent) -> None:
        log.info("task enqueued", task_name=event.task_name, task_id=event.task_id, queue=event.queue)

    def _on_refused(self, event: TaskEvent) -> None:
        errors = getattr(event.exception, "errors", None)
        fields = []
        if callable(errors):
            fields = [".".join(map(str, e["loc"])) for e in errors(include_input=False)]
        log.warning(
            "payload refused in caller",
            task_name=event.task_name,
            fields=fields,
            **_exception_fields(event.exception) if not fields else {},
        )

    def _on_started(self, event: TaskEvent) -> None:
        request = event.request
        if getattr(request, "is_eager", False):
            # apply() and task_always_eager run the task inside its caller -- a web
            # request, a test -- whose context is put back when the attempt ends. Inside,
            # the task sees the caller's propagated keys, as a worker would.
            request._celery_kit_caller_context = _set_context_vars()
            propagated = _propagated_context()
        else:
            propagated = _safe_context(request_value(request, CONTEXT_HEADER))
        _clear_contextvars()
        if propagated:
            structlog.contextvars.bind_contextvars(**propagated)
        _bind_task_context(
            event.task_id,
            event.task_name,
            event.queue,
            event.retries,
            getattr(request, "parent_id", None),
            # A task published outside any workflow is its own root (Celery 5.5 leaves
            # root_id empty for eager calls; 5.7 fills it in).
            getattr(request, "root_id", None) or event.task_id,
        )
        log.info("task started", queue_wait_seconds=event.queue_wait)

    def _finished(self, event: TaskEvent, level: int, message: str, **fields: Any) -> None:
        payload = self._payload(event)
        if payload is not None:
            fields["payload"] = payload
        try:
            log.log(level, message, duration_seconds=event.duration, **fields)
        finally:
            _clear_contextvars()
            caller = request_value(event.request, "_celery_kit_caller_context")
            if caller:
                for var, value in caller:
                    var.set(value)

    def _on_succeeded(self, event: TaskEvent) -> None:
        self._finished(event, std_logging.INFO, "task succeeded")

    def _on_retrying(self, event: TaskEvent) -> None:
        self._finished(
            event,
            std_logging.WARNING,
            "task retrying",
            delay_seconds=event.delay,
            reason=event.reason,
            **_exception_fields(event.exception),
        )

    def _on_failed(self, event: TaskEvent) -> None:
        fields: dict[str, Any] = {
            "classification": event.kind.value if event.kind else None,
            "final": event.final,
            "reason": event.reason,
            **_exception_fields(event.exception),
        }
        if event.kind is FailureKind.INVALID_PAYLOAD:
            fields["validation_errors"] = getattr(event.exception, "errors", None)
            fields.pop("exception_message", None)
            message = "task payload invalid"
        else:
            message = "task failed"
        if event.request is None or event.task_id != structlog.contextvars.get_contextvars().get("task_id"):
            # Reported by the worker's main process (hard time limit, lost process).
            fields.update(task_id=event.task_id, task_name=event.task_name, queue=event.queue)
        self._finished(event, std_logging.ERROR, message, **fields)

    def _on_rejected(self, event: TaskEvent) -> None:
        self._finished(event, std_logging.WARNING, "task rejected", **_exception_fields(event.exception))

    def _on_ignored(self, event: TaskEvent) -> None:
        self._finished(event, std_logging.INFO, "task ignored")

    def _on_revoked(self, event: TaskEvent) -> None:
        log.warning("task revoked", task_id=event.task_id, task_name=event.task_name, reason=event.reason)

    def _on_message_rejected(self, event: TaskEvent) -> None:
        # Logged by the worker's main process, outside any task: nothing is bound, so
        # every field is given. The body is never logged (Celery's own line dumps it).
        log.error(
            "message rejected",
            reason=event.reason,
            task_name=event.task_name,
            task_id=event.task_id,
            queue=event.queue,
            content_type=event.detail,
            **_exception_fields(event.exception),
        )

    @staticmethod
    def _payload(event: TaskEvent) -> Any:
        """The validated payload, JSON-dumped (secrets masked), for tasks that opt in."""
        if not getattr(event.task, "log_payload", False) or event.request is None:
            return None
        payload = request_value(event.request, "_celery_kit_payload")
        return None if payload is None else redact(dump_masked(payload))


def _configure_worker_logging(
    loglevel: int | str | None = None, logfile: str | None = None, **_: Any
) -> None:
    """Celery's ``setup_logging`` hook: with a receiver, Celery leaves logging to us.

    Sent in worker and beat processes only; warnings and (in JSON mode) the banner and
    ``print()`` output are routed into logging there too (:mod:`celery_kit._worker_output`).
    """
    stream: IO[str] | None = None
    if logfile:
        stream = open(logfile, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- lives with the process
    elif isinstance(sys.stderr, LoggingProxy):
        # Standard error is already redirected into logging (worker_redirect_stdouts):
        # writing log lines there would feed them back into logging.
        stream = sys.__stderr__
    json = _worker_json
    if json is None:  # what configure_logging() picks: JSON unless the stream is a terminal
        target = stream or sys.stderr
        json = not (hasattr(target, "isatty") and target.isatty())
    configure_logging(json=json, level=loglevel or "INFO", stream=stream)
    _worker_output.install(json=json)


def _configure_worker_logging_early(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Celery's ``celeryd_init`` hook: the same set-up, before the worker checks its privileges.

    Celery warns there (running as root) before it sends ``setup_logging``; configured
    now, that warning is a JSON line too. A ``--logfile`` (which Celery names per node)
    waits for ``setup_logging``.
    """
    options = options or {}
    if not options.get("logfile"):
        _configure_worker_logging(loglevel=options.get("loglevel"))


_worker_json: bool | None = None


def install(*, json: bool | None = None, context_keys: Iterable[str] = DEFAULT_PROPAGATED_KEYS) -> None:
    """Take over worker logging and propagate context; used by :func:`celery_kit.instrument`."""
    global _worker_json
    _worker_json = json
    propagate_context(context_keys)
    # "task started"/"task succeeded" carry the ids and the duration: Celery's own
    # "Task x[id] received" and "... succeeded in 0.01s" lines would log those steps twice
    # -- the first one in the worker's main process, whose consumer loop is the
    # throughput bottleneck. Celery's failure lines, with tracebacks, are errors and stay.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        std_logging.getLogger(name).setLevel(std_logging.WARNING)
    signals.setup_logging.connect(_configure_worker_logging, weak=False, dispatch_uid="celery_kit.logging")
    signals.celeryd_init.connect(
        _configure_worker_logging_early, weak=False, dispatch_uid="celery_kit.logging_early"
    )
    signals.before_task_publish.connect(_inject_context, weak=False, dispatch_uid="celery_kit.log_context")
