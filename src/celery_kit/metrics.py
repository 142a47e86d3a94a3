"""Prometheus metrics for tasks, correct under the prefork pool.

Metric names use base units and the prefix ``celery_`` (configurable). Labels are only
``task``, ``queue`` and one documented extra label -- never hostname, pid or task id, which
would give every worker restart a new time series.

Under the prefork pool each pool process counts in prometheus-client's multiprocess
mode, and the metrics are served **only** from the worker's main process, which sums
what every process counted (``_metrics_worker.py``). The solo and threads pools count
in plain mode. Producers (a web app) count ``celery_task_published_total`` in their own
registry.

Every registered task's series exist from worker start, at 0 (Prometheus' advice for
label values known in advance): ``increase()`` needs a sample before the first event, or
the first hard timeout, invalid payload or final failure of a fresh worker is never seen.
The worker's main process creates them, and each alert sink's delivery results, for every
task routed to a queue it consumes, before its endpoint serves, in plain and in
multiprocess mode alike. Two kinds of series cannot exist in advance:
``celery_task_failures_total`` (its ``exception`` label is the class a task raises) and
``celery_task_last_success_timestamp_seconds``, which has no sample until the task's first
success -- a 0 would claim it last succeeded in 1970, and a restarted worker claim the same
of a task that succeeded a minute before it.

``celery_worker_messages_rejected_total{reason}`` counts, in the worker's main process,
the messages it discarded before any task saw them -- unknown task, undecodable body,
refused content type, malformed message -- labelled only by the closed set of
:class:`~celery_kit._events.RejectReason` values: the task name and routing key of such
a message are whatever its publisher made up.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._events import EventType, FailureKind, RejectReason, TaskEvent
from ._observer import Observer

__all__ = [
    "DEFAULT_DURATION_BUCKETS",
    "DEFAULT_QUEUE_WAIT_BUCKETS",
    "MetricsObserver",
    "TaskMetrics",
]

logger = logging.getLogger("celery_kit")

#: Up to an hour: long report tasks are the ones whose duration matters most.
DEFAULT_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)
#: Up to six hours of queue wait: a backlog is what this histogram is for.
DEFAULT_QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600)
#: Distinct exception class names counted per process before the rest become ``other``.
MAX_EXCEPTION_LABELS = 50

_OUTCOMES = {
    EventType.SUCCEEDED: "succeeded",
    EventType.RETRYING: "retried",
    EventType.FAILED: "failed",
    EventType.REJECTED: "rejected",
    EventType.REVOKED: "revoked",
    EventType.IGNORED: "ignored",
}
_LABEL_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")
#: Entries each per-observer cache (label children, label-safe queue names) keeps.
_MAX_CACHED = 4096
_REJECT_REASONS = frozenset(reason.value for reason in RejectReason)


class TaskMetrics:
    """The metric families, created once per (registry, prefix)."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        prefix: str = "celery",
        duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
        queue_wait_buckets: Sequence[float] = DEFAULT_QUEUE_WAIT_BUCKETS,
    ) -> None:
        p = prefix
        tq = ("task", "queue")
        self.published = Counter(f"{p}_task_published", "Tasks published.", tq, registry=registry)
        self.started = Counter(f"{p}_task_started", "Task attempts started.", tq, registry=registry)
        self.finished = Counter(
            f"{p}_task_finished",
            "Task attempts finished, by outcome (succeeded, failed, retried, rejected, revoked, ignored).",
            (*tq, "outcome"),
            registry=registry,
        )
        self.failures = Counter(
            f"{p}_task_failures",
            "Failed attempts by exception class; final=true when no attempt follows.",
            (*tq, "exception", "final"),
            registry=registry,
        )
        self.validation_errors = Counter(
            f"{p}_task_validation_errors",
            "Payloads refused by validation, in the caller or on the worker.",
            (*tq, "side"),
            registry=registry,
        )
        self.duplicates_refused = Counter(
            f"{p}_task_duplicates_refused",
            "Unique tasks refused because another task holds their key, in the caller or on the worker.",
            (*tq, "side"),
            registry=registry,
        )
        self.timeouts = Counter(
            f"{p}_task_timeouts", "Time limits hit, soft or hard.", (*tq, "kind"), registry=registry
        )
        self.duration = Histogram(
            f"{p}_task_duration_seconds",
            "Run time of task attempts, all outcomes.",
            tq,
            buckets=tuple(duration_buckets),
            registry=registry,
        )
        self.queue_wait = Histogram(
            f"{p}_task_queue_wait_seconds",
            "Time from publish (or ETA) to start.",
            tq,
            buckets=tuple(queue_wait_buckets),
            registry=registry,
        )
        self.in_progress = Gauge(
            f"{p}_task_in_progress",
            "Task attempts running now.",
            tq,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.last_success = Gauge(
            f"{p}_task_last_success_timestamp_seconds",
            "Unix time of the last successful attempt.",
            tq,
            registry=registry,
            multiprocess_mode="max",
        )
        self.alerts = Counter(
            "celery_kit_alerts",
            "Alert deliveries by sink and result (sent, suppressed, failed).",
            ("sink", "result"),
            registry=registry,
        )
        self.process_restarts = Counter(
            f"{p}_worker_process_restarts",
            "Pool processes started after the worker was ready (recycled, crashed, scaled).",
            registry=registry,
        )
        self.messages_rejected = Counter(
            f"{p}_worker_messages_rejected",
            "Messages the worker discarded before any task ran, by reason "
            "(unknown_task, decode_error, content_type, invalid_message).",
            ("reason",),
            registry=registry,
        )
        for reason in RejectReason:  # every reason exported from the start, at 0
            self.messages_rejected.labels(reason.value)


class MetricsObserver(Observer):
    """Counts task events into :class:`TaskMetrics`."""

    def __init__(self, metrics: TaskMetrics) -> None:
        self.metrics = metrics
        self._exceptions: set[str] = set()
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], _Series] = {}
        # Label children of the less frequent events, and queue names made label-safe;
        # both bounded, since task names and routing keys come from messages.
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._queues: dict[str, str] = {}

    def rebind(self, metrics: TaskMetrics) -> None:
        """Count into other families from now on (the worker chose multiprocess mode)."""
        with self._lock:
            self._cache.clear()
            self._children.clear()
            self.metrics = metrics

    def _exception_label(self, exc: BaseException | None) -> str:
        name = type(exc).__name__ if exc is not None else "none"
        if name in self._exceptions:
            return name
        with self._lock:
            if len(self._exceptions) < MAX_EXCEPTION_LABELS:
                self._exceptions.add(name)
                return name
        return "other"

    def _queue_label(self, queue: str | None) -> str:
        if not queue:
            return "unknown"
        label = self._queues.get(queue)
        if label is None:
            label = _LABEL_SAFE.sub("_", queue)
            if len(self._queues) < _MAX_CACHED:
                self._queues[queue] = label
        return label

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached like :meth:`_series`."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < _MAX_CACHED:
                self._children[key] = child
        return child

    def precreate(self, task: str, raw_queue: str | None) -> None:
        """Create ``task``'s series on ``raw_queue`` at 0: the counters, histograms and gauge
        whose label values are known before any attempt (not ``failures``, whose exception
        label is not, nor ``last_success``, which has no value before a success)."""
        series = self._series(task, raw_queue)
        m = self.metrics
        self._child(m.validation_errors, task, series.queue, "worker")
        for kind in _TIMEOUT_KINDS:
            self._child(m.timeouts, task, series.queue, kind)

    def _series(self, task: str, raw_queue: str | None) -> _Series:
        """The per-(task, queue) children, resolved once: ``labels()`` costs a lock and a hash."""
        key = (task, raw_queue)
        series = self._cache.get(key)
        if series is None:
            m = self.metrics
            queue = self._queue_label(raw_queue)
            finished = {kind: m.finished.labels(task, queue, outcome) for kind, outcome in _OUTCOMES.items()}
            series = _Series(
                started=m.started.labels(task, queue),
                in_progress=m.in_progress.labels(task, queue),
                queue_wait=m.queue_wait.labels(task, queue),
                duration=m.duration.labels(task, queue),
                finished=finished,
                succeeded=finished[EventType.SUCCEEDED],
                task=task,
                queue=queue,
            )
            if len(self._cache) < _MAX_CACHED:
                self._cache[key] = series
        return series

    def on_published(self, event: TaskEvent) -> None:
        self._child(self.metrics.published, event.task_name, self._queue_label(event.queue)).inc()

    def on_refused(self, event: TaskEvent) -> None:
        queue = self._queue_label(event.queue)
        if event.reason == "duplicate":  # a unique task's key is taken (_unique_lock.py)
            self._child(
                self.metrics.duplicates_refused, event.task_name, queue, event.detail or "caller"
            ).inc()
            return
        self._child(self.metrics.validation_errors, event.task_name, queue, "caller").inc()

    def on_started(self, event: TaskEvent) -> None:
        series = self._series(event.task_name, event.queue)
        series.started.inc()
        series.in_progress.inc()
        if event.queue_wait is not None:
            series.queue_wait.observe(event.queue_wait)

    def on_succeeded(self, event: TaskEvent) -> None:
        """The usual end of an attempt, always in the pool process that counted its start."""
        series = self._series(event.task_name, event.queue)
        series.succeeded.inc()
        if event.duration is not None:
            series.duration.observe(event.duration)
        series.in_progress.dec()
        last_success = series.last_success
        if last_success is None:  # created at the first success: never a sample of 0
            last_success = series.last_success = self.metrics.last_success.labels(series.task, series.queue)
        last_success.set(time.time())

    def _finished(self, event: TaskEvent) -> None:
        """Every other end of an attempt: retried, failed, rejected, ignored, revoked."""
        m = self.metrics
        task = event.task_name
        kind = event.type
        series = self._series(task, event.queue)
        series.finished[kind].inc()
        if event.duration is not None:
            series.duration.observe(event.duration)
        from_pool_process = kind is not _REVOKED and not (
            event.detail == "hard" or event.kind is _WORKER_LOST
        )
        if from_pool_process:  # the process that counted the start counts the end
            series.in_progress.dec()
        if kind is _FAILED or kind is _RETRYING:
            queue = self._queue_label(event.queue)
            final = "true" if event.final else "false"
            self._child(m.failures, task, queue, self._exception_label(event.exception), final).inc()
            if event.kind is _INVALID_PAYLOAD:
                self._child(m.validation_errors, task, queue, "worker").inc()
            elif event.kind is _TIMEOUT:
                self._child(m.timeouts, task, queue, event.detail or "soft").inc()

    on_retrying = on_failed = on_rejected = on_ignored = on_revoked = _finished

    def on_message_rejected(self, event: TaskEvent) -> None:
        reason = event.reason if event.reason in _REJECT_REASONS else RejectReason.INVALID_MESSAGE.value
        self.metrics.messages_rejected.labels(reason).inc()


_REVOKED, _FAILED, _RETRYING = EventType.REVOKED, EventType.FAILED, EventType.RETRYING
_WORKER_LOST, _INVALID_PAYLOAD, _TIMEOUT = (
    FailureKind.WORKER_LOST,
    FailureKind.INVALID_PAYLOAD,
    FailureKind.TIMEOUT,
)


_TIMEOUT_KINDS = ("soft", "hard")


@dataclass(slots=True)
class _Series:
    started: Any
    in_progress: Any
    queue_wait: Any
    duration: Any
    finished: dict[EventType, Any]
    succeeded: Any
    task: str
    queue: str
    #: Created at the first success (see the module docstring).
    last_success: Any = None
