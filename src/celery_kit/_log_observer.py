"""The logging observer: each task lifecycle step logged once, the task's context bound meanwhile.

It binds ``task_id``, ``task_name``, ``queue``, ``retries``, ``parent_id`` and ``root_id``
(structlog's context variables) when an attempt starts, logs each step once, and clears
the context when the attempt ends, so nothing leaks from one task into the next.

Where its lines go depends on the process, not on the observer:

* outside a worker (a web app, a script, a test calling ``delay()`` or ``apply()``), through
  the standard library's ``celery_kit.tasks`` logger, fields as ``extra``: the
  application's logging configuration decides what is written and where (nothing, if it
  says ``WARNING``), never structlog's default of printing to standard output;
* in a worker process, through a structlog logger configured as structlog recommends for
  production (:func:`celery_kit._worker_logging.take_over`), which writes the same JSON
  line as the standard library's records get, without the round trip through ``logging``.

Payload values are never logged unless a task opts in with ``log_payload=True``; even then
secrets are masked by the kit's one redactor.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import structlog

from ._context import ContextPropagation
from ._events import FailureKind, TaskEvent
from ._observer import Observer
from ._payload import dump_masked
from ._redact import redact

__all__ = ["TASKS_LOGGER", "LineLogger", "LoggingObserver", "StdlibLines"]

TASKS_LOGGER = "celery_kit.tasks"


class LineLogger(Protocol):
    """What the observer writes through: ``log(level, event, **fields)``."""

    def log(self, level: int, event: str, **fields: Any) -> Any: ...


#: Attributes of a ``LogRecord``: ``extra`` may not set them (``logging`` raises).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class StdlibLines:
    """Lines through ``logging.getLogger("celery_kit.tasks")``, fields as ``extra``.

    structlog's bound context (the task's ids, a web request's ``request_id``) is added
    to the fields, so a plain ``logging`` formatter or handler can read it too (a
    record's ``task_id``, on the lines of an attempt); context keys that name a
    ``LogRecord`` attribute (``filename``, ``name`` ...) are left out of ``extra``.
    """

    def __init__(self, name: str = TASKS_LOGGER) -> None:
        self._logger = logging.getLogger(name)

    def log(self, level: int, event: str, **fields: Any) -> None:
        logger = self._logger
        if logger.isEnabledFor(level):
            context = structlog.contextvars.get_contextvars()
            extra = {k: v for k, v in context.items() if k not in _RECORD_ATTRIBUTES}
            extra.update(fields)
            logger.log(level, event, extra=extra)


def _exception_fields(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {}
    return {"exception_type": type(exc).__name__, "exception_message": str(exc)[:1000]}


class LoggingObserver(Observer):
    """Logs each task lifecycle event once and keeps the task's context bound meanwhile.

    Args:
        context: the app's propagated keys (``instrument(log_context=...)``): stamped on
            the messages the app publishes, bound from the messages its workers run.
        lines: where lines go; default the standard library's ``celery_kit.tasks`` logger,
            replaced in worker processes when the kit takes their logging over.
    """

    def __init__(self, context: ContextPropagation | None = None, lines: LineLogger | None = None) -> None:
        self.context = context if context is not None else ContextPropagation()
        self.lines: LineLogger = lines if lines is not None else StdlibLines()
        #: The caller's context of each eager attempt running now: (thread, task id) -> context.
        self._callers: dict[tuple[int, str | None], dict[str, Any]] = {}

    def stamp_headers(self, headers: dict[str, Any]) -> None:
        """Called by the dispatcher for each message the app publishes."""
        self.context.stamp_headers(headers)

    def on_published(self, event: TaskEvent) -> None:
        self.lines.log(
            logging.DEBUG,
            "task enqueued",
            task_name=event.task_name,
            task_id=event.task_id,
            queue=event.queue,
        )

    def on_refused(self, event: TaskEvent) -> None:
        errors = getattr(event.exception, "errors", None)
        fields: list[str] = []
        if callable(errors):
            fields = [".".join(map(str, e["loc"])) for e in errors(include_input=False)]
        self.lines.log(
            logging.WARNING,
            "payload refused in caller",
            task_name=event.task_name,
            fields=fields,
            **_exception_fields(event.exception) if not fields else {},
        )

    def on_started(self, event: TaskEvent) -> None:
        if event.eager:
            # apply() and task_always_eager run the task inside its caller -- a web
            # request, a test -- whose context is put back when the attempt ends. Inside,
            # the task sees the caller's propagated keys, as a worker would.
            caller = structlog.contextvars.get_contextvars()
            self._callers[(threading.get_ident(), event.task_id)] = caller
            propagated = self.context.safe(caller)
        else:
            propagated = self.context.safe(event.context)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            **propagated,
            task_id=event.task_id,
            task_name=event.task_name,
            queue=event.queue,
            retries=event.retries,
            parent_id=event.parent_id,
            # A task published outside any workflow is its own root (Celery 5.5 leaves
            # root_id empty for eager calls; 5.7 fills it in).
            root_id=event.root_id or event.task_id,
        )
        self.lines.log(logging.INFO, "task started", queue_wait_seconds=event.queue_wait)

    def _finished(self, event: TaskEvent, level: int, message: str, **fields: Any) -> None:
        payload = self._payload(event)
        if payload is not None:
            fields["payload"] = payload
        try:
            self.lines.log(level, message, duration_seconds=event.duration, **fields)
        finally:
            structlog.contextvars.clear_contextvars()
            caller = self._callers.pop((threading.get_ident(), event.task_id), None) if event.eager else None
            if caller:
                structlog.contextvars.bind_contextvars(**caller)

    def on_succeeded(self, event: TaskEvent) -> None:
        self._finished(event, logging.INFO, "task succeeded")

    def on_retrying(self, event: TaskEvent) -> None:
        self._finished(
            event,
            logging.WARNING,
            "task retrying",
            delay_seconds=event.delay,
            reason=event.reason,
            **_exception_fields(event.exception),
        )

    def on_failed(self, event: TaskEvent) -> None:
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
        self._finished(event, logging.ERROR, message, **fields)

    def on_rejected(self, event: TaskEvent) -> None:
        self._finished(event, logging.WARNING, "task rejected", **_exception_fields(event.exception))

    def on_ignored(self, event: TaskEvent) -> None:
        self._finished(event, logging.INFO, "task ignored")

    def on_revoked(self, event: TaskEvent) -> None:
        self.lines.log(
            logging.WARNING,
            "task revoked",
            task_id=event.task_id,
            task_name=event.task_name,
            reason=event.reason,
        )

    def on_message_rejected(self, event: TaskEvent) -> None:
        # Logged by the worker's main process, outside any task: nothing is bound, so
        # every field is given. The body is never logged (Celery's own line dumps it).
        self.lines.log(
            logging.ERROR,
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
        if not getattr(event.task, "log_payload", False) or event.payload is None:
            return None
        return redact(dump_masked(event.payload))
