"""One event path: the task class classifies a failure once and observers read it.

The task class decides retries and classifies errors; it does not log, count or alert.
Celery's signals are bridged (``_bridge.py``) into :class:`TaskEvent` objects, enriched
with that classification, and each observer (logging, metrics, alerts, health -- one
module each) subscribes to the app's :class:`Dispatcher` and knows nothing of the
others. An observer that raises is logged and skipped: it can never change a task's
outcome.

Per attempt a worker emits ``STARTED`` and then exactly one of ``SUCCEEDED``,
``RETRYING``, ``FAILED``, ``REJECTED``, ``IGNORED`` (from the process that ran it), or,
when the pool process died or was killed at the hard time limit, ``FAILED`` from the
worker's main process. ``REVOKED`` comes from the main process. Producers emit
``PUBLISHED``, and ``REFUSED`` when caller-side validation refuses a payload.

``MESSAGE_REJECTED`` is not about an attempt: the worker's main process emits it once
for each message it threw away before any task saw it (see :class:`RejectReason`).
Celery acknowledges or rejects such a message itself, without requeueing it, so it can
never come back as a poison message; the event is how observers learn that it existed.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from ._errors import PayloadValidationError

__all__ = [
    "Classification",
    "Dispatcher",
    "EventType",
    "FailureKind",
    "RejectReason",
    "Subscriber",
    "TaskEvent",
    "classify",
    "dispatcher_for",
    "request_value",
]

logger = logging.getLogger("celery_kit")


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
        )

    @property
    def finished(self) -> bool:
        """Whether this event ends an attempt."""
        return self.type in FINISHED


#: What a dispatcher calls with each event: a :class:`celery_kit.Observer`, or any callable.
Subscriber = Callable[[TaskEvent], None]


def request_value(request: Any, name: str) -> Any:
    """``getattr(request, name, None)`` for a message header or a mark the kit set.

    Celery's request context keeps both in its instance dictionary. Most are absent
    from most requests (no failure classified, no header on an eager call), and a
    ``getattr`` that misses builds and discards an ``AttributeError`` -- on every
    attempt, in every observer that asks.
    """
    try:
        return request.__dict__.get(name)
    except AttributeError:  # no instance dictionary: another kind of request object
        return getattr(request, name, None)


def classify(exc: BaseException) -> FailureKind:
    """Classify an exception that did not pass through a kit task's own decision.

    Used for failures seen from outside the task body: hard time limits and lost
    pool processes reported by the worker's main process, and plain Celery tasks.
    """
    if isinstance(exc, PayloadValidationError):
        return FailureKind.INVALID_PAYLOAD
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return FailureKind.TIMEOUT
    if isinstance(exc, WorkerLostError):
        return FailureKind.WORKER_LOST
    return FailureKind.PERMANENT


class Dispatcher:
    """Fans task events out to the observers subscribed for one app.

    An observer may declare the event types it reads as an ``event_types`` attribute (a
    collection of :class:`EventType`); it is then called for those only, and an event
    type no observer reads is not even built (:meth:`wants`). Without the attribute an
    observer gets every event.
    """

    def __init__(self) -> None:
        self._observers: tuple[Subscriber, ...] = ()
        self._routes: dict[EventType, tuple[Subscriber, ...]] = {}
        self._lock = threading.Lock()

    @property
    def observers(self) -> tuple[Subscriber, ...]:
        return self._observers

    def wants(self, event_type: EventType) -> bool:
        """Whether any subscribed observer reads events of ``event_type``."""
        return event_type in self._routes

    def _set_observers(self, observers: tuple[Subscriber, ...]) -> None:
        routes: dict[EventType, tuple[Subscriber, ...]] = {}
        for event_type in EventType:
            takers = tuple(o for o in observers if event_type in getattr(o, "event_types", (event_type,)))
            if takers:
                routes[event_type] = takers
        self._routes = routes
        self._observers = observers

    def subscribe(self, observer: Subscriber) -> Subscriber:
        """Add ``observer`` (idempotent); returns it, so it works as a decorator.

        ``observer`` is a :class:`celery_kit.Observer`, or any callable taking a
        :class:`TaskEvent` (optionally with an ``event_types`` attribute).
        """
        from ._bridge import connect_process_receivers, connect_task_receivers  # imports us

        connect_task_receivers()
        if getattr(observer, "observes_processes", False):
            connect_process_receivers()
        with self._lock:
            if observer not in self._observers:
                self._set_observers((*self._observers, observer))
        return observer

    def unsubscribe(self, observer: Subscriber) -> None:
        with self._lock:
            self._set_observers(tuple(o for o in self._observers if o is not observer))

    def emit(self, event: TaskEvent) -> None:
        for observer in self._routes.get(event.type, ()):
            try:
                observer(event)
            except Exception:
                logger.exception(
                    "celery_kit observer %r failed on %s event of task %s[%s]",
                    observer,
                    event.type.value,
                    event.task_name,
                    event.task_id,
                )


#: The app a kit task is publishing through, for the publish signals (which name no app).
publishing_app: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "celery_kit_publishing_app", default=None
)

_dispatchers_lock = threading.Lock()
_known_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def known_apps() -> list[Any]:
    """Apps that have a dispatcher (weakly held)."""
    return list(_known_apps)


def dispatcher_for(app: Any) -> Dispatcher:
    """The dispatcher of ``app``, created on first use."""
    dispatcher: Dispatcher | None = getattr(app, "_celery_kit_dispatcher", None)
    if dispatcher is None:
        with _dispatchers_lock:
            dispatcher = getattr(app, "_celery_kit_dispatcher", None)
            if dispatcher is None:
                dispatcher = Dispatcher()
                app._celery_kit_dispatcher = dispatcher
                _known_apps.add(app)
    return dispatcher
