"""One event path: the task class classifies a failure once and observers read it.

Plain data: the event, its enums and the classification a kit task records. Celery's
signals are bridged (``_bridge.py``) into :class:`TaskEvent` objects that carry
everything an observer reads -- the classification, the validated payload, the
workflow ids, the producer's propagated context -- so no observer reaches into
Celery's request. The dispatcher (``_dispatch.py``) hands each event to the app's
observers (``_observer.py``).

Per attempt a worker emits ``STARTED`` and then exactly one of ``SUCCEEDED``,
``RETRYING``, ``FAILED``, ``REJECTED``, ``IGNORED`` (from the process that ran it), or,
when the pool process died or was killed at the hard time limit, ``FAILED`` from the
worker's main process. ``REVOKED`` comes from the main process. Producers emit
``PUBLISHED``, and ``REFUSED`` when caller-side validation refuses a payload (with
``reason="duplicate"``: a unique task's key is taken, in the caller or on the worker).

``MESSAGE_REJECTED`` is not about an attempt: the worker's main process emits it once
for each message it threw away before any task saw it (see :class:`RejectReason`).
Celery acknowledges or rejects such a message itself, without requeueing it, so it can
never come back as a poison message; the event is how observers learn that it existed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Classification",
    "EventType",
    "FailureKind",
    "RejectReason",
    "Subscriber",
    "TaskEvent",
]


class FailureKind(str, enum.Enum):
    """Why a task attempt failed; every observer reads this one classification."""

    INVALID_PAYLOAD = "invalid_payload"
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"


class EventType(str, enum.Enum):
    PUBLISHED = "published"
    REFUSED = "refused"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    REJECTED = "rejected"
    IGNORED = "ignored"
    REVOKED = "revoked"
    #: A message the worker discarded before any task ran; ``reason`` is a :class:`RejectReason`.
    MESSAGE_REJECTED = "message_rejected"


class RejectReason(str, enum.Enum):
    """Why the worker discarded a message before any task saw it.

    The values are the ``reason`` label of ``celery_worker_messages_rejected_total``: a
    closed set, because everything else about such a message (its task name, its
    routing key) is chosen by whoever published it.
    """

    #: No task of that name is registered on this worker (Celery: ``task_unknown``).
    UNKNOWN_TASK = "unknown_task"
    #: The body is not valid for its content type (bad JSON); Celery acknowledges it.
    DECODE_ERROR = "decode_error"
    #: The content type is not in ``accept_content`` -- pickle, for one.
    CONTENT_TYPE = "content_type"
    #: Not a task message: no task header, or a body that is not ``[args, kwargs, embed]``.
    INVALID_MESSAGE = "invalid_message"


#: Events that end an attempt.
FINISHED = frozenset(
    {
        EventType.SUCCEEDED,
        EventType.RETRYING,
        EventType.FAILED,
        EventType.REJECTED,
        EventType.IGNORED,
        EventType.REVOKED,
    }
)


@dataclass(frozen=True, slots=True)
class Classification:
    """What a kit task decided about a failed attempt, kept on the request."""

    kind: FailureKind
    final: bool
    reason: str
    delay: float | None = None
    #: For timeouts: ``"soft"`` or ``"hard"``.
    timeout: str | None = None


@dataclass(frozen=True, init=False)
class TaskEvent:
    """A classified task lifecycle event.

    ``final`` is true exactly once per failed task: when no further attempt will follow
    (retries exhausted, deadline passed, or an error that is never retried).

    Immutable, like any frozen dataclass (``dataclasses.replace`` makes a changed copy).
    """

    type: EventType
    task_name: str
    task_id: str | None
    kind: FailureKind | None = None
    final: bool = False
    exception: BaseException | None = None
    retries: int = 0
    #: ``"retries exhausted"``, ``"deadline"``, ``"not retriable"``, ``"soft time limit"`` ...;
    #: a :class:`RejectReason` value for ``MESSAGE_REJECTED``.
    reason: str = ""
    #: Seconds until the next attempt, for ``RETRYING`` events.
    delay: float | None = None
    #: The queue (routing key) the message came from or was sent to.
    queue: str | None = None
    #: Seconds the attempt ran, for events that end an attempt.
    duration: float | None = None
    #: Seconds the message waited in the queue (ETA/countdown excluded), for ``STARTED``.
    queue_wait: float | None = None
    #: ``"soft"`` or ``"hard"`` for timeouts; ``"caller"`` or ``"worker"`` for refused
    #: payloads; the message's content type for ``MESSAGE_REJECTED``.
    detail: str | None = None
    #: The Celery request context (headers, root id, hostname ...), when there is one.
    request: Any = field(default=None, repr=False, compare=False)
    #: The task object, when there is one.
    task: Any = field(default=None, repr=False, compare=False)
    #: The validated payload of the attempt (a kit task's model, or a dict of its
    #: declared arguments); ``None`` before validation or for a plain task.
    payload: Any = field(default=None, repr=False, compare=False)
    #: The workflow ids: the task that published this one, and the first of its workflow.
    parent_id: str | None = None
    root_id: str | None = None
    #: The worker node that ran the attempt (``celery@host``), when known.
    hostname: str | None = None
    #: Whether the attempt runs inside its caller (``apply()``, ``task_always_eager``).
    eager: bool = False
    #: The context header the producer sent (``STARTED`` on a worker), as it came: the
    #: logging observer keeps only its app's allowlisted, JSON-safe keys.
    context: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def __init__(
        self,
        type: EventType,
        task_name: str,
        task_id: str | None,
        kind: FailureKind | None = None,
        final: bool = False,
        exception: BaseException | None = None,
        retries: int = 0,
        reason: str = "",
        delay: float | None = None,
        queue: str | None = None,
        duration: float | None = None,
        queue_wait: float | None = None,
        detail: str | None = None,
        request: Any = None,
        task: Any = None,
        payload: Any = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        hostname: str | None = None,
        eager: bool = False,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        # Two events per attempt: one dict update costs less than half of the generated
        # frozen ``__init__``, which goes through ``object.__setattr__`` once per field.
        self.__dict__.update(
            type=type,
            task_name=task_name,
            task_id=task_id,
            kind=kind,
            final=final,
            exception=exception,
            retries=retries,
            reason=reason,
            delay=delay,
            queue=queue,
            duration=duration,
            queue_wait=queue_wait,
            detail=detail,
            request=request,
            task=task,
            payload=payload,
            parent_id=parent_id,
            root_id=root_id,
            hostname=hostname,
            eager=eager,
            context=context,
        )

    @property
    def finished(self) -> bool:
        """Whether this event ends an attempt."""
        return self.type in FINISHED


#: What a dispatcher calls with each event: a :class:`celery_kit.Observer`, or any callable.
Subscriber = Callable[[TaskEvent], None]
