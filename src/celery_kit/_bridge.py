"""Celery signals in, classified :class:`~celery_kit.TaskEvent` objects out.

The receivers are connected once, at import, and cost a couple of attribute lookups
for apps nobody observes. Each turns one Celery signal into at most one event on the
task's app dispatcher, enriched with what a kit task decided about a failure (kept on
the request as a :class:`~celery_kit._events.Classification`).

Where each event comes from:

=============  ======================================  ==================
event          Celery signal                           process
=============  ======================================  ==================
PUBLISHED      ``before_task_publish``                 producer
STARTED        ``task_prerun``                         pool process
finished       ``task_postrun`` (state of the attempt) pool process
FAILED (hard)  ``task_failure`` with a hard time       worker main process
               limit or a lost pool process
REVOKED        ``task_revoked``                        worker main process
=============  ======================================  ==================
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

from celery import signals, states
from celery._state import get_current_app
from celery.exceptions import Retry, TimeLimitExceeded, WorkerLostError

from ._events import (
    Classification,
    Dispatcher,
    EventType,
    FailureKind,
    TaskEvent,
    classify,
    known_apps,
    publishing_app,
)

__all__ = ["PUBLISHED_AT_HEADER"]

#: Message header with the wall-clock publish time, for the queue-wait measurement.
PUBLISHED_AT_HEADER = "celery_kit_published_at"

_FINISHED_BY_STATE = {
    states.SUCCESS: EventType.SUCCEEDED,
    states.RETRY: EventType.RETRYING,
    states.FAILURE: EventType.FAILED,
    states.REJECTED: EventType.REJECTED,
    states.IGNORED: EventType.IGNORED,
}


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
    published = getattr(request, PUBLISHED_AT_HEADER, None)
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
    if dispatcher is not None:
        name = headers.get("task") or sender or "unknown"
        dispatcher.emit(TaskEvent(EventType.PUBLISHED, name, headers.get("id"), queue=routing_key or None))


def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    dispatcher = _dispatcher(task)
    if dispatcher is None:
        return
    request = task.request
    request._celery_kit_started = time.monotonic()
    dispatcher.emit(
        TaskEvent(
            EventType.STARTED,
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
    dispatcher = _dispatcher(task)
    if dispatcher is None or state is None:
        # No state: the attempt was cut short by a BaseException (the pool process is
        # being terminated at the hard time limit, or revoked with terminate=True); the
        # worker's main process reports it.
        return
    request = task.request
    started = getattr(request, "_celery_kit_started", None)
    duration = time.monotonic() - started if started is not None else None
    event_type = _FINISHED_BY_STATE.get(state or "", EventType.FAILED)
    outcome: Classification | None = getattr(request, "_celery_kit_outcome", None)
    exception = retval if isinstance(retval, BaseException) else None
    kind: FailureKind | None = None
    final = False
    reason = ""
    delay = None
    detail = None
    if event_type is EventType.RETRYING:
        if isinstance(retval, Retry):
            exception = retval.exc if isinstance(retval.exc, BaseException) else retval
            if isinstance(retval.when, (int, float)):
                delay = float(retval.when)
        kind, reason = FailureKind.TRANSIENT, "retry requested"
        if outcome is not None:
            kind, reason, delay, detail = outcome.kind, outcome.reason, outcome.delay, outcome.timeout
    elif event_type is EventType.FAILED:
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


signals.before_task_publish.connect(_on_before_publish, weak=False, dispatch_uid="celery_kit.before_publish")
signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="celery_kit.prerun")
signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="celery_kit.postrun")
signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="celery_kit.failure")
signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="celery_kit.revoked")
