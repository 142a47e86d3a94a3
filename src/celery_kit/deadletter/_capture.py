"""Capture: the observer that writes a dead letter for every message the kit gives up on.

Where each entry is written, and why there:

* a task's final failure (retries exhausted, permanent or non-retriable error, a final
  soft time limit, an invalid payload) -- in the pool process that ran the attempt, at
  its ``FAILED`` event (Celery's ``task_postrun``). Under ``acks_late`` that is before the
  worker's main process acknowledges the message: a pool process killed while writing
  leaves the message unacknowledged, and it is redelivered.
* a hard time limit or a lost pool process -- in the worker's main process, from the
  kit's request class, before Celery settles the message; only when the message will
  not be redelivered (``acks_late`` with ``reject_on_worker_lost``, or a timeout that is
  not acknowledged, means it comes back and is not dead yet).
* a message the guard refused (not JSON, content type refused, unknown task, invalid
  envelope) -- in the main process, from :func:`celery_kit._refusal.refuse`, before the
  message is settled, with its raw body and headers since it cannot be decoded.

An entry's id is the task id (a digest of the message when it has none), so a message
redelivered after a kill mid-write replaces its own entry: it appears once.

A write that fails is retried briefly, then logged with the reason and counted
(``<prefix>_dead_letter_write_failures_total``, which the example alert rules page on);
it never raises into the task.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any

from kombu.utils.json import dumps as kombu_dumps

from .._events import FailureKind, RejectReason, TaskEvent
from .._observer import Observer
from .._redact import redact_url
from ._config import store_config
from ._entry import REPLAYED_FROM_HEADER, DeadLetter, StoredMessage, entry_id
from ._metrics import metrics_for
from ._store import DeadLetterStore

__all__ = ["DeadLetterObserver", "install"]

logger = logging.getLogger("celery_kit.deadletter")

FIRST_ATTEMPT_HEADER = "celery_kit_first_attempt"
#: Keys Celery adds to a request that are not message headers.
_NOT_HEADERS = frozenset(
    {
        "args",
        "kwargs",
        "properties",
        "reply_to",
        "correlation_id",
        "hostname",
        "delivery_info",
        "loglevel",
        "logfile",
        "is_eager",
        "callbacks",
        "errbacks",
        "chain",
        "chord",
        "called_directly",
        "headers",
        "utc",
    }
)
_EMBED = ("callbacks", "errbacks", "chain", "chord")
_PROPERTIES = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration", "message_id", "type")
#: How a write is retried before it is given up (seconds to wait before each retry).
_WRITE_RETRIES = (0.1, 0.5)
#: Seconds between the main process's refreshes of the size gauge (and retention).
REFRESH_SETTING = "celery_kit_dead_letter_refresh"
DEFAULT_REFRESH = 15.0


def request_value(request: Any, name: str) -> Any:
    """A header or attribute of Celery's request context, ``None`` when absent."""
    try:
        return request.__dict__.get(name)
    except AttributeError:
        return getattr(request, name, None)


def _jsonable(value: Any) -> Any:
    return json.loads(kombu_dumps(value, default=repr))  # type: ignore[no-untyped-call]


def _timestamp(value: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(float(value), timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _properties(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}
    return {key: _jsonable(raw[key]) for key in _PROPERTIES if raw.get(key) is not None}


def entry_from_task_event(event: TaskEvent, source: str) -> DeadLetter:
    """The entry of a task's final failure, from its request (pool or main process)."""
    request = event.request
    data: dict[str, Any] = dict(getattr(request, "__dict__", {}) or {})
    args = data.get("args") or []
    kwargs = data.get("kwargs") or {}
    embed = {key: data.get(key) for key in _EMBED}
    headers = {
        key: value for key, value in data.items() if key not in _NOT_HEADERS and not key.startswith("_")
    }
    info = data.get("delivery_info") or {}
    body: str = kombu_dumps([list(args), dict(kwargs), embed])  # type: ignore[no-untyped-call]
    message = StoredMessage(
        body=body,
        headers=_jsonable(headers),
        properties=_properties(data.get("properties")),
        exchange=str(info.get("exchange") or ""),
        routing_key=info.get("routing_key") or event.queue,
    )
    exc = event.exception
    now = time.time()
    last = now - event.duration if event.duration is not None else now
    first = _timestamp(headers.get(FIRST_ATTEMPT_HEADER)) or _timestamp(last)
    return DeadLetter(
        id=entry_id(event.task_id, body.encode(), headers),
        task_name=event.task_name,
        task_id=event.task_id,
        queue=event.queue,
        source=source,  # type: ignore[arg-type]
        kind=event.kind.value if event.kind is not None else FailureKind.PERMANENT.value,
        reason=event.reason or "failed",
        exception_type=type(exc).__name__ if exc is not None else None,
        exception_message=redact_url(str(exc))[:2000] if exc is not None else None,
        attempts=int(event.retries or 0) + 1,
        first_attempt_at=first,
        last_attempt_at=_timestamp(last),
        hostname=data.get("hostname"),
        replayed_from=headers.get(REPLAYED_FROM_HEADER),
        message=message,
    )


def entry_from_message(
    consumer: Any, message: Any, reason: RejectReason, error: Any, task_name: str | None, task_id: str | None
) -> DeadLetter:
    """The entry of a message the guard refused: raw body and headers, as they came."""
    raw_headers = getattr(message, "headers", None)
    headers = _jsonable(raw_headers) if isinstance(raw_headers, dict) else {}
    body = getattr(message, "body", b"")
    if body is None:
        body = b""
    info = getattr(message, "delivery_info", None) or {}
    stored = StoredMessage.from_bytes(
        body if isinstance(body, (bytes, str)) else repr(body),
        content_type=getattr(message, "content_type", None),
        content_encoding=getattr(message, "content_encoding", None),
        headers=headers,
        properties=_properties(getattr(message, "properties", None)),
        exchange=str(info.get("exchange") or ""),
        routing_key=info.get("routing_key"),
    )
    now = datetime.now(timezone.utc)
    detail = str(getattr(error, "detail", None) or error)
    return DeadLetter(
        id=entry_id(task_id, stored.raw_body(), headers),
        task_name=task_name or "unknown",
        task_id=task_id,
        queue=info.get("routing_key"),
        source="message_rejected",
        kind="message_rejected",
        reason=reason.value,
        exception_type=type(error).__name__,
        exception_message=redact_url(detail)[:2000],
        attempts=0,
        last_attempt_at=now,
        hostname=getattr(consumer, "hostname", None),
        message=stored,
    )


def _redelivered(task: Any, event: TaskEvent) -> bool:
    """Whether the worker's main process will requeue a message it reports as failed."""
    if not getattr(task, "acks_late", False):
        return False
    if event.kind is FailureKind.WORKER_LOST:
        if getattr(task, "reject_on_worker_lost", False):
            return True
        max_retries = getattr(task, "max_retries", None)
        return bool(getattr(task, "retry_on_worker_lost", False)) and (
            max_retries is None or event.retries < max_retries
        )
    # A hard time limit: Celery 5.7 reads acks_on_timeout, older ones acks_on_failure_or_timeout.
    acks_on_timeout = getattr(task, "acks_on_timeout", None)
    if acks_on_timeout is None:
        acks_on_timeout = getattr(task, "acks_on_failure_or_timeout", None)
    return acks_on_timeout is not None and not acks_on_timeout


class DeadLetterObserver(Observer):
    """Writes the dead letters of one app (see the module docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._store: DeadLetterStore | None = None
        self._lock = threading.Lock()
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()
        self._seen_tasks: set[str] = set()

    def __repr__(self) -> str:
        return f"<DeadLetterObserver app={self.app.main!r}>"

    @property
    def store(self) -> DeadLetterStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = DeadLetterStore.for_app(self.app)
        return self._store

    # -- hooks -------------------------------------------------------------------------------

    def on_failed(self, event: TaskEvent) -> None:
        if not event.final or event.task_name.startswith("celery."):
            return
        request = event.request
        if (
            event.eager
            or request is None
            or request_value(request, "is_eager")
            or request_value(request, "called_directly")
        ):
            return  # apply() / a direct call: no message was published, none can be replayed
        main_process = event.kind is FailureKind.WORKER_LOST or event.detail == "hard"
        if main_process and _redelivered(event.task, event):
            return  # the broker gives it to a worker again: not dead yet
        source = "worker_lost" if event.kind is FailureKind.WORKER_LOST else "task"
        try:
            entry = entry_from_task_event(event, source)
        except Exception:
            logger.exception(
                "celery_kit could not build the dead letter of %s[%s]", event.task_name, event.task_id
            )
            self._count_failure(event.task_name)
            return
        self.write(entry)

    def on_started(self, event: TaskEvent) -> None:
        request = event.request
        # The replayed message's first attempt only: a retry of it carries the header too.
        if request is not None and not event.retries and request_value(request, REPLAYED_FROM_HEADER):
            metrics = metrics_for(self.app)
            if metrics is not None:
                metrics.replayed.labels(event.task_name).inc()

    def on_worker_init(self, worker: Any) -> None:
        store_config(self.app)  # a misconfigured store stops the worker now, not at 9 a.m.

    def on_worker_ready(self, worker: Any) -> None:
        self.start_refresher()  # the main process, after the pool forked

    def on_worker_shutdown(self, worker: Any) -> None:
        self.stop_refresher()

    def remove(self) -> None:
        """Undo :func:`install` (``uninstrument(app)``)."""
        self.stop_refresher()
        for name in (KEEP_REJECTED_ATTRIBUTE, "_celery_kit_dead_letters"):
            if getattr(self.app, name, None) is not None:
                delattr(self.app, name)
        if self._store is not None:
            self._store.close()
            self._store = None

    # -- the guard's refused messages ----------------------------------------------------------

    def keep_rejected(self, consumer: Any, message: Any, reason: RejectReason, error: Any) -> None:
        """Called by the message guard before it settles a refused message. Never raises."""
        try:
            from .._refusal import refused_task

            name, task_id = refused_task(message)
            entry = entry_from_message(consumer, message, reason, error, name, task_id)
        except Exception:
            logger.exception("celery_kit could not build the dead letter of a refused message")
            self._count_failure("unknown")
            return
        self.write(entry)

    # -- writing -------------------------------------------------------------------------------

    def write(self, entry: DeadLetter) -> bool:
        """Store ``entry``, retrying briefly; log and count a failure. Never raises."""
        error: BaseException | None = None
        for delay in (0.0, *_WRITE_RETRIES):
            if delay:
                time.sleep(delay)
            try:
                result = self.store.put(entry)
            except Exception as exc:
                error = exc
                continue
            metrics = metrics_for(self.app)
            if metrics is not None:
                if result.new:
                    metrics.stored.labels(entry.task_name).inc()
                for task in result.dropped:
                    metrics.dropped.labels(task).inc()
                if self.store.backend.name == "redis":
                    self._set_sizes(metrics)
            return True
        logger.error(
            "celery_kit could not store the dead letter of %s[%s] (%s: %s) in %s; the message "
            "is not kept. Check the dead-letter store.",
            entry.task_name,
            entry.task_id,
            type(error).__name__,
            redact_url(str(error)),
            self.store.backend.location,
        )
        self._count_failure(entry.task_name)
        return False

    def _count_failure(self, task: str) -> None:
        metrics = metrics_for(self.app)
        if metrics is not None:
            metrics.write_failures.labels(task).inc()

    def _set_sizes(self, metrics: Any, store: DeadLetterStore | None = None) -> None:
        counts = (store or self.store).backend.counts().by_task
        for task in self._seen_tasks - set(counts):
            metrics.size.labels(task).set(0)
        for task, count in counts.items():
            metrics.size.labels(task).set(count)
        self._seen_tasks |= set(counts)

    # -- the main process's refresher -----------------------------------------------------------

    def refresh(self, store: DeadLetterStore | None = None) -> None:
        """Apply retention and refresh the size gauge (the worker's main process, periodically)."""
        store = store or self.store
        metrics = metrics_for(self.app)
        dropped = store.trim()
        if metrics is None:
            return
        for task in dropped:
            metrics.dropped.labels(task).inc()
        self._set_sizes(metrics, store)

    def start_refresher(self) -> None:
        if self._refresher is not None:
            return
        interval = float(self.app.conf.get(REFRESH_SETTING) or DEFAULT_REFRESH)
        metrics = metrics_for(self.app)
        if metrics is not None:
            metrics.precreate([name for name in sorted(self.app.tasks) if not name.startswith("celery.")])
            for name in self.app.tasks:
                if not name.startswith("celery."):
                    self._seen_tasks.add(name)

        def run() -> None:
            store = DeadLetterStore.for_app(self.app)  # its own connection: not the consumer's
            try:
                while True:
                    try:
                        self.refresh(store)
                    except Exception as exc:
                        logger.warning("celery_kit could not refresh the dead-letter gauge: %r", exc)
                    if self._stop.wait(interval):
                        return
            finally:
                store.close()

        self._stop.clear()
        self._refresher = threading.Thread(target=run, name="celery_kit dead letters", daemon=True)
        self._refresher.start()

    def stop_refresher(self) -> None:
        self._stop.set()
        self._refresher = None


DeadLetterObserver.__module__ = "celery_kit.deadletter"

#: App attribute the message guard calls for refused messages (see ``_refusal.refuse``).
KEEP_REJECTED_ATTRIBUTE = "_celery_kit_keep_rejected"


def install(app: Any) -> DeadLetterObserver:
    """Capture ``app``'s dead letters; used by :func:`celery_kit.instrument`.

    Returns the observer to subscribe, and sets the hook the message guard calls for
    refused messages; :meth:`DeadLetterObserver.remove` (``uninstrument``) undoes it.
    """
    observer = DeadLetterObserver(app)
    setattr(app, KEEP_REJECTED_ATTRIBUTE, observer.keep_rejected)
    app._celery_kit_dead_letters = observer
    return observer
