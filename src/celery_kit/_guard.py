"""The worker's guard: no message crashes it, every message it discards is reported once.

:class:`MessageGuard` is a consumer bootstep added to every observed app's worker:
Celery sends no signal for a body it cannot decode, and a few malformed envelopes crash
its consumer outright. The receivers of Celery's own refusal signals (``task_rejected``,
``task_unknown``) live here too; the bridge connects them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.exceptions import InvalidTaskError
from kombu.exceptions import ContentDisallowed

from ._dispatch import dispatcher_of
from ._envelope import envelope_problem
from ._events import EventType, RejectReason, TaskEvent
from ._refusal import refuse, refused_task

__all__ = [
    "MessageGuard",
    "add_message_guard",
    "on_task_rejected",
    "on_task_unknown",
    "report_rejected_message",
]


#: Longest publisher-chosen text (task name, id, routing key, content type) an event carries.
_MAX_TEXT = 200


def _clip(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= _MAX_TEXT else f"{text[:_MAX_TEXT]}..."


def report_rejected_message(
    consumer: Any,
    message: Any,
    reason: RejectReason,
    exception: BaseException | None,
    *,
    name: Any = None,
    task_id: Any = None,
) -> None:
    """Emit the one ``MESSAGE_REJECTED`` event for a message the worker discarded.

    Everything the event says about the message comes from whoever published it, so
    each text is clipped, and the body is never read.
    """
    dispatcher = dispatcher_of(getattr(consumer, "app", None))
    if dispatcher is None:
        return
    headers = getattr(message, "headers", None)
    if not isinstance(headers, dict):
        headers = {}
    info = getattr(message, "delivery_info", None) or {}
    dispatcher.emit(
        TaskEvent(
            EventType.MESSAGE_REJECTED,
            _clip(name if name is not None else headers.get("task")) or "unknown",
            _clip(task_id if task_id is not None else headers.get("id")),
            exception=exception,
            reason=reason.value,
            queue=_clip(info.get("routing_key") or info.get("exchange") or None),
            detail=_clip(getattr(message, "content_type", None)),
        )
    )


def on_task_rejected(
    sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any
) -> None:
    """Celery rejected a message it could not read as a task (``on_invalid_task``,
    ``on_unknown_message``), without requeueing it."""
    if isinstance(exc, ContentDisallowed):
        reason = RejectReason.CONTENT_TYPE
    else:
        reason = RejectReason.INVALID_MESSAGE
        if exc is None:  # on_unknown_message says nothing more
            exc = InvalidTaskError("not a task message: no 'task' header and no task named in the body")
    report_rejected_message(sender, message, reason, exc)


def on_task_unknown(
    sender: Any = None, message: Any = None, exc: BaseException | None = None, name: Any = None, **kwargs: Any
) -> None:
    """Celery rejected a message naming a task this worker does not have."""
    report_rejected_message(
        sender, message, RejectReason.UNKNOWN_TASK, exc, name=name, task_id=kwargs.get("id")
    )


class MessageGuard(bootsteps.Step):  # type: ignore[misc]
    """Consumer bootstep: no message crashes the worker; every refusal is reported once.

    Sets callbacks of this one consumer instance (nothing global, nothing in Celery's
    classes), the way Celery's own consumer bootsteps set consumer attributes:

    * ``create_task_handler`` -- the handler it builds first checks the envelope
      (:func:`~celery_kit._envelope.envelope_problem`) and refuses a message Celery would
      crash on or be misled by, as an invalid message.
    * ``on_decode_error``, ``on_invalid_task``, ``on_unknown_task``,
      ``on_unknown_message`` -- Celery's four ways of refusing a message, replaced by
      :func:`~celery_kit._refusal.refuse`: the same settling and signals, plus a
      ``FAILURE`` result for the caller, and no message body in the log.

    Added to the worker of every app that has a dispatcher (``instrument(app)``).
    """

    label = "celery_kit message guard"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        consumer = parent
        create_task_handler: Callable[..., Callable[[Any], Any]] = consumer.create_task_handler

        def on_decode_error(message: Any, exc: BaseException) -> None:
            refuse(consumer, message, RejectReason.DECODE_ERROR, exc, f"the body cannot be decoded: {exc}")
            report_rejected_message(consumer, message, RejectReason.DECODE_ERROR, exc)

        def on_invalid_task(body: Any, message: Any, exc: BaseException) -> None:
            if isinstance(exc, ContentDisallowed):
                reason, detail = RejectReason.CONTENT_TYPE, f"the content type is refused: {exc}"
            else:
                reason, detail = RejectReason.INVALID_MESSAGE, str(exc)
            refuse(consumer, message, reason, exc, detail)

        def on_unknown_task(body: Any, message: Any, exc: BaseException) -> None:
            name, _ = refused_task(message)
            detail = (
                f"no task named {_clip(name)} is registered on this worker (is its module "
                "imported by the worker, and the message routed to the right queue?)"
            )
            refuse(consumer, message, RejectReason.UNKNOWN_TASK, exc, detail)

        def on_unknown_message(body: Any, message: Any) -> None:
            detail = "not a task message: no 'task' header and no task named in the body"
            refuse(consumer, message, RejectReason.INVALID_MESSAGE, None, detail)

        def guarded_task_handler(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
            handler = create_task_handler(*args, **kwargs)
            known_tasks = consumer.strategies  # updated in place on every reconnect

            def on_task_received(message: Any) -> Any:
                try:
                    problem = envelope_problem(message, known_tasks)
                except Exception as exc:  # a check that fails must not stop the consumer
                    problem = f"the envelope could not be checked ({type(exc).__name__}: {exc})"
                if problem is not None:
                    return on_invalid_task(None, message, InvalidTaskError(problem))
                return handler(message)

            return on_task_received

        # create_task_handler reads these four when the consumer starts, after this step.
        consumer.on_decode_error = on_decode_error
        consumer.on_invalid_task = on_invalid_task
        consumer.on_unknown_task = on_unknown_task
        consumer.on_unknown_message = on_unknown_message
        consumer.create_task_handler = guarded_task_handler


def add_message_guard(worker: Any) -> None:
    """At ``worker_init``, before the consumer exists: guard an observed app's consumers."""
    worker.app.steps["consumer"].add(MessageGuard)
