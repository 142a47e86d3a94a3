"""celery_kit.metrics: what each task event counts, in a private registry."""

from __future__ import annotations

import pytest
from celery import Celery
from kombu.entity import Queue
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from celery_kit import PermanentError, RetryPolicy, TaskEvent, dispatcher_for, validated_task
from celery_kit._events import EventType
from celery_kit._metrics_worker import _routed_tasks
from celery_kit.metrics import MAX_EXCEPTION_LABELS, MetricsObserver, TaskMetrics


@pytest.fixture
def registry(app: Celery) -> CollectorRegistry:
    registry = CollectorRegistry()
    dispatcher_for(app).subscribe(MetricsObserver(TaskMetrics(registry, prefix="t")))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_outcomes_durations_and_gauges(app: Celery, registry: CollectorRegistry) -> None:
    calls: list[int] = []

    @validated_task(
        app, shared=False, name="m.mixed", retry=RetryPolicy(retry_on=ConnectionError, max_retries=1)
    )
    def mixed(n: int) -> int:
        calls.append(n)
        if n == 1 and calls.count(1) == 1:
            raise ConnectionError("once")
        if n == 2:
            raise PermanentError("never")
        return n

    mixed.apply((0,))
    mixed.apply((1,))
    mixed.apply((2,))
    with pytest.raises(ValidationError):
        mixed.delay("x")  # refused in the caller: nothing published, nothing started
    labels = {"task": "m.mixed", "queue": "unknown"}
    assert value(registry, "t_task_started_total", **labels) == 4
    assert value(registry, "t_task_finished_total", outcome="succeeded", **labels) == 2
    assert value(registry, "t_task_finished_total", outcome="retried", **labels) == 1
    assert value(registry, "t_task_finished_total", outcome="failed", **labels) == 1
    assert value(registry, "t_task_failures_total", exception="ConnectionError", final="false", **labels) == 1
    assert value(registry, "t_task_failures_total", exception="PermanentError", final="true", **labels) == 1
    assert value(registry, "t_task_validation_errors_total", side="caller", **labels) == 1
    assert value(registry, "t_task_duration_seconds_count", **labels) == 4
    assert value(registry, "t_task_in_progress", **labels) == 0
    assert value(registry, "t_task_last_success_timestamp_seconds", **labels) > 0


def test_exception_labels_are_capped(app: Celery) -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(TaskMetrics(registry, prefix="c"))
    for i in range(MAX_EXCEPTION_LABELS + 10):
        error = type(f"Error{i}", (Exception,), {})()
        observer(TaskEvent(EventType.FAILED, "m.t", "id", final=True, exception=error, queue="q"))
    families = {
        s.labels["exception"] for m in registry.collect() for s in m.samples if "exception" in s.labels
    }
    assert len(families) == MAX_EXCEPTION_LABELS + 1
    assert "other" in families
    assert (
        value(registry, "c_task_failures_total", task="m.t", queue="q", exception="other", final="true") == 10
    )


def test_published_messages_are_counted_on_the_producer(app: Celery, registry: CollectorRegistry) -> None:
    @validated_task(app, shared=False, name="m.pub")
    def pub() -> None: ...

    pub.delay()
    pub.delay()
    assert value(registry, "t_task_published_total", task="m.pub", queue=app.conf.task_default_queue) == 2


def test_messages_the_worker_discards_are_counted_by_reason_only() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(TaskMetrics(registry, prefix="r"))
    name = "r_worker_messages_rejected_total"
    for reason in ("unknown_task", "decode_error", "content_type", "invalid_message"):
        assert registry.get_sample_value(name, {"reason": reason}) == 0  # exported from the start
    for reason in ("unknown_task", "unknown_task", "decode_error", "made-up reason"):
        observer(
            TaskEvent(EventType.MESSAGE_REJECTED, "attacker.chosen.name", "id", reason=reason, queue="q")
        )
    assert value(registry, name, reason="unknown_task") == 2
    assert value(registry, name, reason="decode_error") == 1
    assert value(registry, name, reason="content_type") == 0
    assert value(registry, name, reason="invalid_message") == 1  # the label set stays closed
    labels = {
        key
        for m in registry.collect()
        if m.name == "r_worker_messages_rejected"
        for s in m.samples
        for key in s.labels
    }
    assert labels == {"reason"}  # never the publisher-chosen task name or routing key
    assert value(registry, "r_task_started_total", task="attacker.chosen.name", queue="q") == 0


def test_last_success_has_no_sample_before_the_first_success() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(TaskMetrics(registry, prefix="ls"))
    name = "ls_task_last_success_timestamp_seconds"
    labels = {"task": "m.t", "queue": "q"}
    observer(TaskEvent(EventType.STARTED, "m.t", "a", queue="q"))
    assert registry.get_sample_value(name, labels) is None  # not 0: "last succeeded in 1970"
    observer(TaskEvent(EventType.FAILED, "m.t", "a", final=True, exception=ValueError(), queue="q"))
    assert registry.get_sample_value(name, labels) is None
    observer(TaskEvent(EventType.STARTED, "m.t", "b", queue="q"))
    observer(TaskEvent(EventType.SUCCEEDED, "m.t", "b", queue="q"))
    first = registry.get_sample_value(name, labels)
    assert first is not None
    assert first > 1.7e9
    observer(TaskEvent(EventType.STARTED, "m.t", "c", queue="q"))
    observer(TaskEvent(EventType.SUCCEEDED, "m.t", "c", queue="q"))
    assert (registry.get_sample_value(name, labels) or 0) >= first


def test_precreated_series_are_at_zero_and_counted_into() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(TaskMetrics(registry, prefix="pc"))
    observer.precreate("m.t", "email.high")
    tq = {"task": "m.t", "queue": "email.high"}
    assert registry.get_sample_value("pc_task_started_total", tq) == 0
    for outcome in ("succeeded", "failed", "retried", "rejected", "revoked", "ignored"):
        assert registry.get_sample_value("pc_task_finished_total", {**tq, "outcome": outcome}) == 0
    for kind in ("soft", "hard"):
        assert registry.get_sample_value("pc_task_timeouts_total", {**tq, "kind": kind}) == 0
    assert registry.get_sample_value("pc_task_validation_errors_total", {**tq, "side": "worker"}) == 0
    assert registry.get_sample_value("pc_task_in_progress", tq) == 0
    assert registry.get_sample_value("pc_task_duration_seconds_count", tq) == 0
    assert registry.get_sample_value("pc_task_queue_wait_seconds_bucket", {**tq, "le": "+Inf"}) == 0
    assert registry.get_sample_value("pc_task_last_success_timestamp_seconds", tq) is None
    observer(TaskEvent(EventType.STARTED, "m.t", "a", queue="email.high"))
    observer(TaskEvent(EventType.FAILED, "m.t", "a", final=True, queue="email.high", detail="hard"))
    assert registry.get_sample_value("pc_task_started_total", tq) == 1
    assert registry.get_sample_value("pc_task_finished_total", {**tq, "outcome": "failed"}) == 1


def test_series_are_created_for_the_tasks_routed_to_consumed_queues(app: Celery) -> None:
    app.conf.task_default_queue = "default"
    app.conf.task_queues = [Queue(name) for name in ("default", "email", "reports")]  # type: ignore[no-untyped-call]
    app.conf.task_routes = {"m.routed": {"queue": "reports"}}

    @validated_task(app, shared=False, name="m.plain")
    def plain() -> None: ...

    @validated_task(app, shared=False, name="m.email", queue="email")
    def email() -> None: ...

    @validated_task(app, shared=False, name="m.routed")
    def routed() -> None: ...

    app.amqp.queues.select(["default", "email"])  # what `celery worker -Q default,email` does
    ours = [(task, queue) for task, queue in _routed_tasks(app) if task.startswith("m.")]
    assert ours == [("m.email", "email"), ("m.plain", "default")]
    assert not [task for task, _ in _routed_tasks(app) if task.startswith("celery.")]
