"""Celery signals in, classified :class:`~celery_kit.TaskEvent` objects out.

The bridge is the only part of the kit that connects Celery signals, and it connects
them when the first app gets a dispatcher (``instrument(app)``, or
:func:`dispatcher_for`), not at import; :func:`disconnect` undoes it when the last app
is uninstrumented. Every receiver is a module-level function that looks the app up
(apps are held weakly), so no receiver keeps an app alive. Each turns one Celery signal
into at most one event on the task's app dispatcher, enriched with what a kit task
decided about a failure (a :class:`~celery_kit._events.Classification`, kept on the
request by the task class) and with everything observers read (payload, workflow ids,
propagated context), so observers never read Celery's request themselves.

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
                  the message guard (``_guard.py``)
================  ======================================  ===================

Process hooks (worker, pool process, beat) and the worker's logging take-over are
bridged in ``_lifecycle.py``; both are connected from here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from threading import get_ident
from typing import Any

from celery import signals, states
from celery.exceptions import (
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    WorkerLostError,
)

from . import _guard, _lifecycle
from ._context import CONTEXT_HEADER
from ._dispatch import Dispatcher, dispatcher_of, known_apps, publishing_app, register_app
from ._errors import PayloadValidationError
from ._events import Classification, EventType, FailureKind, TaskEvent

__all__ = [
    "PUBLISHED_AT_HEADER",
    "classify",
    "connect",
    "connect_logging",
    "connect_unique",
    "disconnect",
    "dispatcher_for",
    "report_main_process_failure",
    "request_value",
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


def dispatcher_for(app: Any) -> Dispatcher:
    """The dispatcher of ``app``, created on first use; the first one connects the bridge.

    Subscribe an observer (or any callable taking a :class:`~celery_kit.TaskEvent`) to
    it, or pass observers to :func:`celery_kit.instrument`, which does the same.
    """
    dispatcher = register_app(app)
    connect()
    return dispatcher


def request_value(request: Any, name: str) -> Any:
    """``getattr(request, name, None)`` for a message header or a mark the kit set.

    Celery's request context keeps both in its instance dictionary. Most are absent
    from most requests (no failure classified, no header on an eager call), and a
    ``getattr`` that misses builds and discards an ``AttributeError`` -- on every
    attempt.
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


def _dispatcher(task: Any) -> Dispatcher | None:
    try:
        app = task.app
    except AttributeError:
        return None
    return dispatcher_of(app)


def _context_of(request: Any) -> dict[str, Any] | None:
    raw = request_value(request, CONTEXT_HEADER)
    return raw if isinstance(raw, dict) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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


def _publishing_dispatcher(name: str | None) -> Dispatcher | None:
    """The dispatcher of the app that is publishing task ``name``, if it can be known.

    Celery's publish signals name the task, not the app: a kit task says which app it
    publishes through. For other messages (a plain task's ``delay()``, ``send_task``), the
    one observed app that registers a task of that name, else the only observed app;
    with several observed apps and no way to tell, none -- one app's observers and
    context keys never see another app's messages.
    """
    app = publishing_app.get()
    if app is not None:
        return dispatcher_of(app)
    observed = [(known, d) for known in known_apps() if (d := dispatcher_of(known)) is not None]
    if len(observed) <= 1:
        return observed[0][1] if observed else None
    registering = [d for known, d in observed if getattr(known, "finalized", False) and name in known.tasks]
    return registering[0] if len(registering) == 1 else None


def _on_before_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    if headers is None:
        return
    headers[PUBLISHED_AT_HEADER] = time.time()
    name = headers.get("task") or sender
    dispatcher = _publishing_dispatcher(name)
    if dispatcher is None:
        return
    for stamp in dispatcher.stampers:
        stamp(headers)
    if dispatcher.wants(_PUBLISHED):
        name = name or "unknown"
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
            parent_id=_str_or_none(getattr(request, "parent_id", None)),
            root_id=_str_or_none(getattr(request, "root_id", None)),
            hostname=_str_or_none(getattr(request, "hostname", None)),
            eager=bool(getattr(request, "is_eager", False)),
            context=_context_of(request),
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
    if dispatcher is None:
        return
    if state is None:
        # No state: the attempt was cut short by a BaseException. On a worker, the pool
        # process is being terminated (hard time limit, revoke with terminate=True) and
        # the main process reports it; an eager attempt (SystemExit, KeyboardInterrupt,
        # pytest.fail() in a test) ends here, and its observers must hear of it -- the
        # logging observer gives the caller its context back.
        if attempt is None or not getattr(attempt[0], "is_eager", False):
            return
        state, retval = states.FAILURE, None
        interrupted = True
    else:
        interrupted = False
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
        elif interrupted:
            kind, reason = FailureKind.PERMANENT, "interrupted"
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
            payload=request_value(request, "_celery_kit_payload"),
            parent_id=_str_or_none(getattr(request, "parent_id", None)),
            root_id=_str_or_none(getattr(request, "root_id", None)),
            hostname=_str_or_none(getattr(request, "hostname", None)),
            eager=bool(getattr(request, "is_eager", False)),
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
            parent_id=_str_or_none(getattr(request, "parent_id", None)),
            root_id=_str_or_none(getattr(request, "root_id", None)),
            hostname=_str_or_none(getattr(request, "hostname", None)),
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
            parent_id=_str_or_none(getattr(request, "parent_id", None)),
            root_id=_str_or_none(getattr(request, "root_id", None)),
            hostname=_str_or_none(getattr(request, "hostname", None)),
        )
    )


# -- connecting ---------------------------------------------------------------------------------

#: Every receiver the kit connects: (signal, receiver, dispatch uid).
_RECEIVERS: tuple[tuple[Any, Callable[..., Any], str], ...] = (
    (signals.before_task_publish, _on_before_publish, "before_publish"),
    (signals.task_prerun, _on_prerun, "prerun"),
    (signals.task_postrun, _on_postrun, "postrun"),
    (signals.task_failure, _on_failure, "failure"),
    (signals.task_revoked, _on_revoked, "revoked"),
    (signals.task_rejected, _guard.on_task_rejected, "task_rejected"),
    (signals.task_unknown, _guard.on_task_unknown, "task_unknown"),
    *_lifecycle.RECEIVERS,
)
_connected = False
_connect_lock = threading.Lock()


def connect() -> None:
    """Connect every receiver (idempotent): done when the first app gets a dispatcher.

    Celery sends a signal -- a lock, a scan of the receivers and a keyword dictionary
    per receiver -- only while some receiver is connected, so a process that only
    validates pays none of it.
    """
    global _connected
    if _connected:
        return
    with _connect_lock:
        if not _connected:
            for signal, receiver, uid in _RECEIVERS:
                signal.connect(receiver, weak=False, dispatch_uid=f"celery_kit.{uid}")
            _connected = True


def disconnect() -> None:
    """Disconnect every receiver: done when the last app is uninstrumented."""
    global _connected
    with _connect_lock:
        for signal, receiver, uid in _RECEIVERS:
            signal.disconnect(receiver, dispatch_uid=f"celery_kit.{uid}")
        _attempts.clear()
        _connected = False
    connect_logging(False)


def connect_unique(on_revoked: Callable[..., Any], on_rejected: Callable[..., Any]) -> None:
    """Connect the unique-lock releases (idempotent): done when a unique task is bound.

    A revoked or refused message never finishes, so its lock is released from these
    signals. They belong to the task class, not to an instrumentation: an app that
    only validates has them too, and :func:`disconnect` leaves them connected.
    """
    signals.task_revoked.connect(on_revoked, weak=False, dispatch_uid="celery_kit.unique.revoked")
    signals.task_rejected.connect(on_rejected, weak=False, dispatch_uid="celery_kit.unique.rejected")


def connect_logging(wanted: bool) -> None:
    """Connect (or disconnect) the worker's logging take-over: while any app is
    instrumented with ``logging=True``, and only then, Celery leaves a worker's logging
    to the kit."""
    for signal, receiver, uid in _lifecycle.LOGGING_RECEIVERS:
        if wanted:
            signal.connect(receiver, weak=False, dispatch_uid=f"celery_kit.{uid}")
        else:
            signal.disconnect(receiver, dispatch_uid=f"celery_kit.{uid}")
