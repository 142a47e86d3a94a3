"""Celery signals in, classified :class:`~celery_kit.TaskEvent` objects out.

The receivers are connected once: at import, except the two that run for every
attempt, which wait for the first observer (:func:`connect_task_receivers`); for apps
nobody observes they cost a couple of attribute lookups. Each turns one Celery signal
into at most one event on the task's app dispatcher, enriched with what a kit task
decided about a failure (kept on the request as a
:class:`~celery_kit._events.Classification`).

Where each event comes from:

================  ======================================  ===================
event             Celery signal                           process
================  ======================================  ===================
PUBLISHED         ``before_task_publish``                 producer
STARTED           ``task_prerun``                         pool process
finished          ``task_postrun`` (state of the attempt) pool process
FAILED (hard)     ``task_failure`` with a hard time       worker main process
                  limit or a lost pool process
REVOKED           ``task_revoked``                        worker main process
MESSAGE_REJECTED  ``task_unknown``, ``task_rejected``,    worker main process
                  Celery's decode-error callback
================  ======================================  ===================

Messages that never reach a task are reported through :class:`MessageGuard`, a consumer
bootstep added to every observed app's worker: Celery sends no signal for a body it
cannot decode, and a few malformed envelopes crash its consumer outright.
"""

from __future__ import annotations

import logging
import threading
import time
from _thread import get_ident
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery import bootsteps, signals, states
from celery._state import get_current_app
from celery.exceptions import InvalidTaskError, Retry, TimeLimitExceeded, WorkerLostError
from kombu.exceptions import ContentDisallowed

from ._envelope import envelope_problem
from ._events import (
    Classification,
    Dispatcher,
    EventType,
    FailureKind,
    RejectReason,
    TaskEvent,
    classify,
    known_apps,
    publishing_app,
    request_value,
)
from ._refusal import refuse, refused_task

__all__ = [
    "PUBLISHED_AT_HEADER",
    "MessageGuard",
    "connect_process_receivers",
    "connect_task_receivers",
    "envelope_problem",
    "report_rejected_message",
]

logger = logging.getLogger("celery_kit")

#: Message header with the wall-clock publish time, for the queue-wait measurement.
PUBLISHED_AT_HEADER = "celery_kit_published_at"

_FINISHED_BY_STATE = {
    states.SUCCESS: EventType.SUCCEEDED,
    states.RETRY: EventType.RETRYING,
    states.FAILURE: EventType.FAILED,
    states.REJECTED: EventType.REJECTED,
    states.IGNORED: EventType.IGNORED,
}


#: Enum members read on every attempt: a module global is cheaper than ``EventType.X``,
#: which goes through the enum class's attribute lookup each time.
_PUBLISHED, _STARTED = EventType.PUBLISHED, EventType.STARTED
_FAILED, _RETRYING = EventType.FAILED, EventType.RETRYING


def _dispatcher_of_app(app: Any) -> Dispatcher | None:
    dispatcher: Dispatcher | None = getattr(app, "_celery_kit_dispatcher", None)
    return dispatcher if dispatcher is not None and dispatcher.observers else None


def _dispatcher(task: Any) -> Dispatcher | None:
    try:
        app = task.app
    except AttributeError:
        return None
    return _dispatcher_of_app(app)


def _queue_of(request: Any) -> str | None:
    info = getattr(request, "delivery_info", None)
    if not info:
        return None
    return info.get("routing_key") or info.get("exchange") or None


def _eta_timestamp(eta: Any) -> float | None:
    if not eta:
        return None
    if isinstance(eta, datetime):
        return eta.timestamp()
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return None


def _queue_wait(request: Any, now: float) -> float | None:
    """Seconds from publish (or from the ETA, if later) to start, never negative."""
    published = request_value(request, PUBLISHED_AT_HEADER)
    if published is None:
        return None
    try:
        ready = float(published)
    except (TypeError, ValueError):
        return None
    eta = _eta_timestamp(request.eta)
    if eta is not None and eta > ready:
        ready = eta
    return max(0.0, now - ready)


def _publishing_dispatcher() -> Dispatcher | None:
    """The dispatcher of the app that is publishing.

    Celery's publish signals name the task, not the app: a kit task says which app it
    publishes through; for other messages, the current app, else the only observed one.
    """
    app = publishing_app.get()
    if app is not None:
        return _dispatcher_of_app(app)
    current = getattr(get_current_app(), "_celery_kit_dispatcher", None)
    if current is not None and current.observers:
        return current  # type: ignore[no-any-return]
    candidates = [app._celery_kit_dispatcher for app in known_apps() if app._celery_kit_dispatcher.observers]
    return candidates[0] if len(candidates) == 1 else None


def _on_before_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    if headers is None:
        return
    headers[PUBLISHED_AT_HEADER] = time.time()
    dispatcher = _publishing_dispatcher()
    if dispatcher is not None and dispatcher.wants(_PUBLISHED):
        name = headers.get("task") or sender or "unknown"
        dispatcher.emit(TaskEvent(_PUBLISHED, name, headers.get("id"), queue=routing_key or None))


#: The attempts running in this process: (thread, task id) -> (request, monotonic start,
#: the attempt it shadows). Set at ``task_prerun`` and taken at ``task_postrun``, so the
#: end of an attempt needs no second lookup through Celery's thread-local request stack.
#: Keyed by thread too, so two deliveries of one message in a threads pool stay apart; a
#: task that applies itself eagerly under its own id nests one attempt in another, and
#: the inner one shadows the outer until it ends.
_attempts: dict[tuple[int, str | None], tuple[Any, float, Any]] = {}
#: More attempts than any pool runs at once means ``task_postrun`` went missing for some.
_MAX_ATTEMPTS = 10_000


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    dispatcher = _dispatcher(task)
    if dispatcher is None:
        return
    request = task.request
    if len(_attempts) >= _MAX_ATTEMPTS:
        _attempts.clear()
    key = (get_ident(), task_id)
    _attempts[key] = (request, time.monotonic(), _attempts.get(key))
    if not dispatcher.wants(_STARTED):
        return
    dispatcher.emit(
        TaskEvent(
            _STARTED,
            task.name,
            task_id,
            retries=request.retries or 0,
            queue=_queue_of(request),
            queue_wait=_queue_wait(request, time.time()),
            request=request,
            task=task,
        )
    )


def _on_postrun(
    task_id: str | None = None, task: Any = None, retval: Any = None, state: str | None = None, **_: Any
) -> None:
    key = (get_ident(), task_id)
    attempt = _attempts.pop(key, None)
    if attempt is not None and attempt[2] is not None:
        _attempts[key] = attempt[2]
    dispatcher = _dispatcher(task)
    if dispatcher is None or state is None:
        # No state: the attempt was cut short by a BaseException (the pool process is
        # being terminated at the hard time limit, or revoked with terminate=True); the
        # worker's main process reports it.
        return
    event_type = _FINISHED_BY_STATE.get(state or "", _FAILED)
    if not dispatcher.wants(event_type):
        return
    if attempt is not None:
        request, started, _ = attempt
        duration: float | None = time.monotonic() - started
    else:  # observed only since this attempt started
        request, duration = task.request, None
    outcome: Classification | None = request_value(request, "_celery_kit_outcome")
    exception = retval if isinstance(retval, BaseException) else None
    kind: FailureKind | None = None
    final = False
    reason = ""
    delay = None
    detail = None
    if event_type is _RETRYING:
        if isinstance(retval, Retry):
            exception = retval.exc if isinstance(retval.exc, BaseException) else retval
            if isinstance(retval.when, (int, float)):
                delay = float(retval.when)
        kind, reason = FailureKind.TRANSIENT, "retry requested"
        if outcome is not None:
            kind, reason, delay, detail = outcome.kind, outcome.reason, outcome.delay, outcome.timeout
    elif event_type is _FAILED:
        final = True
        if outcome is not None:
            kind, reason, detail = outcome.kind, outcome.reason, outcome.timeout
        else:
            kind = classify(exception) if exception is not None else FailureKind.PERMANENT
            reason = "failed"
            if kind is FailureKind.TIMEOUT:
                detail = "soft"
        if kind is FailureKind.INVALID_PAYLOAD:
            detail = "worker"
    dispatcher.emit(
        TaskEvent(
            event_type,
            task.name,
            task_id,
            kind=kind,
            final=final,
            exception=exception,
            retries=request.retries or 0,
            reason=reason,
            delay=delay,
            queue=_queue_of(request),
            duration=duration,
            detail=detail,
            request=request,
            task=task,
        )
    )


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    """Failures only the worker's main process sees: hard time limits and lost pool processes."""
    if isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
        report_main_process_failure(sender, task_id, exception, sender.request)
    # Anything else was reported by the pool process at task_postrun.


def report_main_process_failure(
    task: Any, task_id: str | None, exception: BaseException, request: Any
) -> None:
    """Emit the one ``FAILED`` event of an attempt whose pool process is gone.

    Called from the ``task_failure`` signal and, for Celery versions that send no signal
    for a hard time limit, from the kit's request class; each attempt is reported once.
    """
    dispatcher = _dispatcher(task)
    if dispatcher is None or _seen_before(task_id):
        return
    if isinstance(exception, TimeLimitExceeded):
        kind, reason, detail = FailureKind.TIMEOUT, "hard time limit", "hard"
        limit = exception.args[0] if exception.args else None
        duration = float(limit) if isinstance(limit, (int, float)) else None
    else:
        kind, reason, detail, duration = FailureKind.WORKER_LOST, "worker lost", None, None
    dispatcher.emit(
        TaskEvent(
            EventType.FAILED,
            task.name,
            task_id,
            kind=kind,
            final=True,
            exception=exception,
            retries=getattr(request, "retries", 0) or 0,
            reason=reason,
            queue=_queue_of(request) if request is not None else None,
            duration=duration,
            detail=detail,
            request=request,
            task=task,
        )
    )


_reported: OrderedDict[str | None, None] = OrderedDict()
_reported_lock = threading.Lock()


def _seen_before(task_id: str | None) -> bool:
    """Celery 5.7 sends ``task_failure`` twice for a hard time limit (from the timeout
    handler and from the pool's error callback); report the attempt once."""
    with _reported_lock:
        if task_id in _reported:
            return True
        _reported[task_id] = None
        if len(_reported) > 1024:
            _reported.popitem(last=False)
        return False


def _on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False, **_: Any
) -> None:
    dispatcher = _dispatcher(sender)
    if dispatcher is None or request is None:
        return
    reason = "expired" if expired else "terminated" if terminated else "revoked"
    dispatcher.emit(
        TaskEvent(
            EventType.REVOKED,
            sender.name,
            request.id,
            reason=reason,
            retries=request.retries or 0,
            queue=_queue_of(request),
            request=request,
            task=sender,
        )
    )


# -- messages that never reach a task -----------------------------------------------------------

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
    dispatcher = _dispatcher_of_app(getattr(consumer, "app", None))
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


def _on_task_rejected(
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


def _on_task_unknown(
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


def _add_message_guard(sender: Any = None, **_: Any) -> None:
    """At ``worker_init``, before the consumer exists: guard observed apps' consumers."""
    app = getattr(sender, "app", None)
    if app is not None and getattr(app, "_celery_kit_dispatcher", None) is not None:
        app.steps["consumer"].add(MessageGuard)


signals.before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid="celery_kit.before_publish")
signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="celery_kit.failure")
signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="celery_kit.revoked")
signals.task_rejected.connect(_on_task_rejected, weak=False, dispatch_uid="celery_kit.task_rejected")
signals.task_unknown.connect(_on_task_unknown, weak=False, dispatch_uid="celery_kit.task_unknown")
signals.worker_init.connect(_add_message_guard, weak=False, dispatch_uid="celery_kit.message_guard")


def connect_task_receivers() -> None:
    """Connect the per-attempt receivers (idempotent); done when an observer subscribes.

    Celery sends ``task_prerun`` and ``task_postrun`` -- a lock, a scan of the receivers
    and a keyword dictionary per receiver, twice per attempt -- only while some receiver
    is connected, and checks on every attempt, so connecting late takes effect at once.
    A process that only validates, or observes nothing, pays none of it.
    """
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celery_kit.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="celery_kit.postrun")


# -- process lifecycle ---------------------------------------------------------------------------


def _process_observers(app: Any) -> tuple[Any, ...]:
    dispatcher = _dispatcher_of_app(app)
    if dispatcher is None:
        return ()
    return tuple(o for o in dispatcher.observers if getattr(o, "observes_processes", False))


def _call_hooks(observers: tuple[Any, ...], hook: str, *args: Any) -> None:
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception:
            logger.exception("celery_kit observer %r failed in %s", observer, hook)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    _call_hooks(_process_observers(getattr(sender, "app", None)), "on_worker_init", sender)


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    _call_hooks(_process_observers(getattr(sender, "app", None)), "on_beat_init", sender)


def _on_process_init(**_: Any) -> None:
    # A pool process serves the one app its worker runs; the signal names none.
    for app in known_apps():
        _call_hooks(_process_observers(app), "on_process_init")


def _on_process_shutdown(**_: Any) -> None:
    for app in known_apps():
        _call_hooks(_process_observers(app), "on_process_shutdown")


def connect_process_receivers() -> None:
    """Connect the process-lifecycle receivers (idempotent); done when an observer with
    process hooks subscribes."""
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="celery_kit.observer_worker_init")
    signals.beat_init.connect(_on_beat_init, weak=False, dispatch_uid="celery_kit.observer_beat_init")
    signals.worker_process_init.connect(
        _on_process_init, weak=False, dispatch_uid="celery_kit.observer_process_init"
    )
    signals.worker_process_shutdown.connect(
        _on_process_shutdown, weak=False, dispatch_uid="celery_kit.observer_process_shutdown"
    )
