"""The errors celery_kit raises, as one small tree users can catch.

::

    CeleryKitError                 base of everything below
    ├── PayloadValidationError     a worker received a payload that does not fit the task's schema
    │   └── ChainPayloadError      the previous task's result does not fit the next step of its
    │                              chain or its callback (also kombu's ``EncodeError``)
    ├── PayloadTooLargeError       the caller tried to publish a payload above the size cap
    ├── PermanentError             raised by task code: fail now, never retry
    ├── ConfigurationError         a task, preset or setting is wrong; raised at import or
    │                              worker start, never in the middle of the night
    └── MessageRejectedError       stored as the result of a message the worker refused
                                   before any task ran (malformed, undecodable, unknown task)

An invalid payload in the *caller* stays :class:`pydantic.ValidationError`, untouched, so
handlers users already have keep working; a call of the wrong shape (a missing or unknown
argument) raises one that is also a :class:`TypeError`, as plain Celery raises. Every
message says what to do next.
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import EncodeError

__all__ = [
    "CeleryKitError",
    "ChainPayloadError",
    "ConfigurationError",
    "MessageRejectedError",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermanentError",
]


class CeleryKitError(Exception):
    """Base class of every error celery_kit raises on purpose."""


class ConfigurationError(CeleryKitError, ValueError):
    """A task, preset or setting is misconfigured; the message names the fix."""


class PermanentError(CeleryKitError):
    """Raise it in a task to fail now: it is never retried, whatever the retry policy says.

    Use it for errors that another attempt cannot fix (a deleted record, a refused
    recipient). The original cause can be chained with ``raise PermanentError(...) from exc``.
    """


class PayloadTooLargeError(CeleryKitError, ValueError):
    """The serialised payload is larger than ``celery_kit_max_payload_bytes``.

    Large objects in task arguments slow every broker hop and every retry; pass a
    reference (an object-store key, a database id) and load the data in the task.
    """

    def __init__(self, task_name: str, size: int, limit: int) -> None:
        self.task_name = task_name
        self.size = size
        self.limit = limit
        super().__init__(task_name, size, limit)

    def __str__(self) -> str:
        return (
            f"payload of task {self.task_name!r} is {self.size} bytes once serialised, "
            f"above the {self.limit}-byte cap (celery_kit_max_payload_bytes). Pass a "
            "reference instead (an object-store key or a database id) and load the data "
            "inside the task, or raise the cap if this size is really intended."
        )


class PayloadValidationError(CeleryKitError):
    """A worker received a payload that does not fit the task's schema.

    The task fails at once, its message is acknowledged and it is never retried: the
    same bytes would fail the same way. The exception survives a JSON result backend:
    ``AsyncResult.get()`` re-raises it with :attr:`errors`, pydantic's error list
    (``loc``, ``msg``, ``type``; input values are left out so secrets never reach the
    backend).
    """

    def __init__(
        self,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        task_name: str | None = None,
    ) -> None:
        self.message = message
        self.errors: list[dict[str, Any]] = list(errors or [])
        self.task_name = task_name
        # args must be exactly the constructor's arguments: Celery's JSON result backend
        # stores ``exc.args`` and rebuilds the exception with ``cls(*args)``.
        super().__init__(message, self.errors, task_name)

    def __str__(self) -> str:
        return self.message


class ChainPayloadError(PayloadValidationError, EncodeError):
    """The previous task's result does not fit the next step of its chain (or its callback).

    Raised on the worker while Celery's tracer hands a successful result on. It is also
    kombu's :class:`~kombu.exceptions.EncodeError` -- the result cannot be encoded as the
    next task's payload -- so Celery records the finishing task as failed (state
    ``FAILURE``, ``task_failure`` sent) rather than as a success followed by an error.
    """


class MessageRejectedError(CeleryKitError):
    """The worker refused this task's message before any task code ran.

    Stored as the task's ``FAILURE`` result, so ``AsyncResult.get()`` raises it at once
    instead of waiting for a result that can never come. It happens only to messages
    published around the kit's and Celery's own producers (another language, a hand-made
    message, a stale deployment): a body that is not JSON, a refused content type
    (pickle), a task this worker does not have, a header Celery cannot parse. The
    message itself was settled without being requeued; publishing it again as it is
    fails the same way.

    Attributes:
        reason: the ``reason`` label of ``celery_worker_messages_rejected_total``
            (``invalid_message``, ``decode_error``, ``content_type``, ``unknown_task``).
        detail: what was wrong with the message, in words.
        task_name: the task the message named, if it named one.
    """

    def __init__(self, reason: str, detail: str, task_name: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.task_name = task_name
        # args must be exactly the constructor's arguments: Celery's JSON result backend
        # stores ``exc.args`` and rebuilds the exception with ``cls(*args)``.
        super().__init__(reason, detail, task_name)

    def __str__(self) -> str:
        task = f"for task {self.task_name!r} " if self.task_name else ""
        return (
            f"the worker refused the message {task}before running it ({self.reason}): "
            f"{self.detail}. Nothing ran and the message is gone; fix the producer "
            "(publish through the task's delay()/apply_async() or follow Celery's message "
            "protocol 2, JSON body) and send the task again."
        )


for _cls in (
    CeleryKitError,
    ChainPayloadError,
    ConfigurationError,
    MessageRejectedError,
    PermanentError,
    PayloadTooLargeError,
    PayloadValidationError,
):
    _cls.__module__ = "celery_kit"
