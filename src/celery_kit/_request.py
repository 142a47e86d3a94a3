"""The worker-side request class of kit tasks (imported by workers only, by name).

The worker refuses what the caller refuses: a payload above the task's size cap, or one
JSON cannot carry (a lone surrogate in a string). The caller measures the payload it
publishes; a message published around the kit (another producer, another language) is
measured here, in the worker's main process, before any pool process sees it. The raw
body's length is known for free and bounds the payload, so only a message that could be
over the cap, or that holds a ``\\ud...`` escape, pays for an exact measurement. A
refused message goes to Celery's own ``on_invalid_task`` (logged, rejected without
requeueing, ``task_rejected`` sent), the way Celery refuses a malformed ETA.

Celery 5.7 sends ``task_failure`` from the worker's main process when the hard time limit
kills a pool process, but without the request on the task's stack; 5.5 and 5.6 only mark
the result. For a lost pool process, 5.5 and 5.6 send ``task_failure`` without the request
on the stack too. Reporting both here, first and with the message's own context, covers
every supported version; the bridge reports each attempt once.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.backends.base import DisabledBackend
from celery.exceptions import InvalidTaskError, TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request
from pydantic_core import PydanticSerializationError, to_json

from ._bridge import report_main_process_failure
from ._errors import MessageRejectedError, PayloadTooLargeError
from ._events import RejectReason

__all__ = ["KitRequest", "payload_problem"]

logger = logging.getLogger("celery_kit")

_ESCAPES = (b"\\ud", b"\\uD")
#: How much longer the caller's measure of a payload can be than the body that carries
#: it: a number written ``1e15`` (4 bytes) is ``1000000000000000.0`` (18) once re-encoded.
_MAX_EXPANSION = 5


def _may_hold_surrogates(body: bytes | str) -> bool:
    if isinstance(body, str):
        return "\\ud" in body or "\\uD" in body
    return _ESCAPES[0] in body or _ESCAPES[1] in body


def payload_problem(task: Any, body: Any, args: Any, kwargs: Any, compressed: bool = False) -> str | None:
    """Why the worker must refuse this payload as the caller would have; ``None`` if it is fine."""
    kit_rules = getattr(task, "_kit_rules", None)
    if kit_rules is None or not kit_rules():
        return None
    limit = int(getattr(task, "_payload_limit", 0) or 0)
    measured_for_free = isinstance(body, (bytes, str)) and not compressed
    if (
        measured_for_free
        and not (limit and len(body) * _MAX_EXPANSION > limit)
        and not _may_hold_surrogates(body)
    ):
        return None
    try:
        size = len(to_json((args, kwargs)))
    except (PydanticSerializationError, UnicodeError) as exc:
        if isinstance(exc, UnicodeError) or "surrogate" in str(exc).lower():
            return (
                f"the payload of task {task.name!r} cannot be encoded as JSON (a string holds a "
                "lone surrogate); the caller refuses it too. Fix the producer."
            )
        return None  # a value only the message serializer knows: the task decides
    if limit and size > limit:
        return str(PayloadTooLargeError(task.name, size, limit))
    return None


class KitRequest(Request):  # type: ignore[misc]
    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(message, *args, **kwargs)
        headers = self._request_dict
        problem = payload_problem(
            self.task, self.body, self.args, self.kwargs, bool(headers.get("compression"))
        )
        if problem is not None:
            if getattr(self.app, "_celery_kit_dispatcher", None) is None:
                # No message guard on this worker to record the refusal: tell the caller here.
                self._record_refusal(problem)
            raise InvalidTaskError(problem)

    def _record_refusal(self, problem: str) -> None:
        if isinstance(self.task.backend, DisabledBackend):
            return
        error = MessageRejectedError(RejectReason.INVALID_MESSAGE.value, problem, self.task.name)
        try:
            self.task.backend.mark_as_failure(self.id, error, request=self._context, call_errbacks=False)
        except Exception as exc:  # a result backend down must not stop the consumer
            logger.warning(
                "could not record the refusal of message %s in the result backend: %r", self.id, exc
            )

    def on_timeout(self, soft: bool, timeout: float) -> None:
        # Report before Celery does: Celery 5.7's ``task_failure`` for a hard limit comes
        # without the request on the task's stack (queue, root id and retries would read
        # as empty); this report carries the message's real context and wins the dedupe.
        if not soft:
            report_main_process_failure(self.task, self.id, TimeLimitExceeded(timeout), self._context)
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        requeued = self.task.acks_late and self.task.reject_on_worker_lost
        if isinstance(exc, TimeLimitExceeded) or (isinstance(exc, WorkerLostError) and not requeued):
            report_main_process_failure(self.task, self.id, exc, self._context)
        super().on_failure(exc_info, send_failed_event, return_ok)
