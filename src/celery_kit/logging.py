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
then ``SecretStr``/``SecretBytes`` fields are masked.
"""

from __future__ import annotations

import logging as std_logging
import sys
import uuid
from collections.abc import Iterable, MutableMapping
from typing import IO, Any, TextIO, cast

import structlog
from celery import signals

from ._events import FailureKind, TaskEvent
from ._payload import PayloadSchema

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
_MAX_VALUE_LENGTH = 256

_propagated_keys: frozenset[str] = frozenset(DEFAULT_PROPAGATED_KEYS)
_handler_marker = "_celery_kit_handler"

_TASKS_LOGGER = "celery_kit.tasks"
#: The lifecycle lines' logger: structlog's own configuration until configure_logging()
#: installs a direct writer (the stdlib round trip costs several times more per line).
log: Any = structlog.get_logger(_TASKS_LOGGER)


def _add_tasks_logger_name(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["logger"] = _TASKS_LOGGER
    return event_dict


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
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
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
        final += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    else:
        final.append(structlog.dev.ConsoleRenderer())
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    numeric_level = std_logging.getLevelName(level.upper()) if isinstance(level, str) else level
    global log
    log = structlog.wrap_logger(
        structlog.WriteLogger(cast("TextIO", stream)),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_tasks_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *final[1:],
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
    )
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


def _inject_context(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is None or not _propagated_keys:
        return
    context = _safe_context(structlog.contextvars.get_contextvars())
    if "correlation_id" in _propagated_keys and "correlation_id" not in context:
        context["correlation_id"] = uuid.uuid4().hex
    headers[CONTEXT_HEADER] = context


def _exception_fields(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {}
    return {"exception_type": type(exc).__name__, "exception_message": str(exc)[:1000]}


class LoggingObserver:
    """Logs each task lifecycle event once and keeps the task's context bound meanwhile."""

    def __call__(self, event: TaskEvent) -> None:
        handler = getattr(self, f"_on_{event.type.value}", None)
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
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            **_safe_context(getattr(request, CONTEXT_HEADER, None)),
            task_id=event.task_id,
            task_name=event.task_name,
            queue=event.queue,
            retries=event.retries,
            parent_id=getattr(request, "parent_id", None),
            root_id=getattr(request, "root_id", None),
        )
        log.info("task started", queue_wait_seconds=event.queue_wait)

    def _finished(self, event: TaskEvent, level: int, message: str, **fields: Any) -> None:
        payload = self._payload(event)
        if payload is not None:
            fields["payload"] = payload
        try:
            log.log(level, message, duration_seconds=event.duration, **fields)
        finally:
            structlog.contextvars.clear_contextvars()

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

    @staticmethod
    def _payload(event: TaskEvent) -> Any:
        """The validated payload, JSON-dumped (secrets masked), for tasks that opt in."""
        if not getattr(event.task, "log_payload", False) or event.request is None:
            return None
        payload = getattr(event.request, "_celery_kit_payload", None)
        return None if payload is None else PayloadSchema.dump_result(payload)


def _configure_worker_logging(
    loglevel: int | str | None = None, logfile: str | None = None, **_: Any
) -> None:
    """Celery's ``setup_logging`` hook: with a receiver, Celery leaves logging to us."""
    stream: IO[str] | None = None
    if logfile:
        stream = open(logfile, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 -- lives with the process
    configure_logging(json=_worker_json, level=loglevel or "INFO", stream=stream)


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
    signals.before_task_publish.connect(_inject_context, weak=False, dispatch_uid="celery_kit.log_context")
