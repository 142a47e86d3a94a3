"""What the worker does with a message it refuses: settle it once, tell the caller, log no body.

Celery's consumer refuses a message that is not a task it can run (an undecodable body, a
refused content type, an unknown task, an envelope it cannot parse) in four callbacks.
Each settles the message so it never comes back, but only the unknown task gets a result,
so a caller waiting on any other refused task blocks until its own timeout with the state
``PENDING``; and each writes up to 1 KiB of the body (secrets included) into the log.

:func:`refuse` does what those callbacks do -- settle the message without requeueing it,
send the same Celery signal, the same ``task-failed`` event for an unknown task -- with two
differences: first, where the message names a task id and the app has a result backend,
it records a ``FAILURE`` holding a :class:`~celery_kit.MessageRejectedError` (before the
message is settled, so a crash in between redelivers rather than loses it); second, it
logs nothing itself: the kit's ``message rejected`` line (and, without the kit's logging,
one short line here) names the reason, the task and the id, never the body.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.app.task import Context
from celery.backends.base import DisabledBackend

from ._envelope import MAX_ID_LENGTH
from ._errors import MessageRejectedError
from ._events import RejectReason

__all__ = ["refuse", "refused_task"]

logger = logging.getLogger("celery_kit")


def refused_task(message: Any, name: Any = None, task_id: Any = None) -> tuple[str | None, str | None]:
    """The task name and id a refused message claims, where they are strings.

    Read from the protocol-2 headers, else from a protocol-1 body (decoded by Celery
    already, and cached by kombu; a refused content type is never decoded).
    """
    headers = getattr(message, "headers", None)
    headers = headers if isinstance(headers, dict) else {}
    body: Any = {}
    if "task" not in headers:
        try:  # protocol 1; kombu refuses a content type outside accept_content undecoded
            body = message.payload
        except Exception:
            body = {}
        body = body if isinstance(body, dict) else {}
    if name is None:
        name = headers.get("task", body.get("task"))
    if task_id is None:
        task_id = headers.get("id", body.get("id"))
    if isinstance(name, str) and len(name) > MAX_ID_LENGTH:  # publisher-chosen: clipped
        name = f"{name[:200]}..."
    return (
        name if isinstance(name, str) else None,
        task_id if isinstance(task_id, str) and len(task_id) <= MAX_ID_LENGTH else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= MAX_ID_LENGTH else None


def _record_failure(consumer: Any, message: Any, error: MessageRejectedError, task_id: str) -> None:
    backend = consumer.app.backend
    if isinstance(backend, DisabledBackend):
        return
    headers = message.headers if isinstance(getattr(message, "headers", None), dict) else {}
    properties = getattr(message, "properties", None)
    properties = properties if isinstance(properties, dict) else {}
    info = getattr(message, "delivery_info", None) or {}
    request = Context(
        id=task_id,
        task=error.task_name,
        root_id=_text(headers.get("root_id")),
        parent_id=_text(headers.get("parent_id")),
        # The rpc:// backend replies to these; nothing of the message is run or chained.
        reply_to=_text(properties.get("reply_to")),
        correlation_id=_text(properties.get("correlation_id")) or task_id,
        hostname=getattr(consumer, "hostname", None),
        delivery_info={"routing_key": _text(info.get("routing_key"))},
        chord=None,
        chain=None,
        errbacks=None,
        group=None,
    )
    try:
        backend.mark_as_failure(task_id, error, request=request, call_errbacks=False)
    except Exception as exc:  # a result backend down must not stop the consumer
        logger.warning("could not record the refusal of message %s in the result backend: %r", task_id, exc)


def refuse(
    consumer: Any,
    message: Any,
    reason: RejectReason,
    exc: BaseException | None,
    detail: str,
    *,
    name: Any = None,
    task_id: Any = None,
) -> MessageRejectedError:
    """Record ``message``'s refusal as its task's result, then settle it, once.

    A body that cannot be decoded is acknowledged, as Celery does; anything else is
    rejected without requeueing, as Celery does. Returns the error recorded (or that
    would have been, for a message without a usable task id).
    """
    task_name, task_id = refused_task(message, name, task_id)
    error = MessageRejectedError(reason.value, detail, task_name)
    instrumentation = getattr(consumer.app, "_celery_kit_instrumentation", None)
    if instrumentation is None or not instrumentation.logging:  # else the kit's line says it
        logger.error("message rejected (%s) task=%s id=%s: %s", reason.value, task_name, task_id, detail)
    if task_id is not None:
        _record_failure(consumer, message, error, task_id)
    # Dead letters (issue 17): kept before the message is settled; never raises.
    keep_rejected = getattr(consumer.app, "_celery_kit_keep_rejected", None)
    if keep_rejected is not None:
        keep_rejected(consumer, message, reason, error)
    errors = getattr(consumer, "connection_errors", ())
    if reason is RejectReason.DECODE_ERROR:
        message.ack_log_error(logger, errors)
    else:
        message.reject_log_error(logger, errors)
    if reason is RejectReason.UNKNOWN_TASK:
        dispatcher = getattr(consumer, "event_dispatcher", None)
        if dispatcher and task_id is not None:
            dispatcher.send("task-failed", uuid=task_id, exception=f"NotRegistered({task_name!r})")
        signals.task_unknown.send(sender=consumer, message=message, exc=exc, name=task_name, id=task_id)
    elif reason is not RejectReason.DECODE_ERROR:  # Celery sends no signal for a decode error
        signals.task_rejected.send(sender=consumer, message=message, exc=exc)
    return error
