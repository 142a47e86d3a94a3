"""Every preset configures a real prefork worker that consumes, on Redis and on RabbitMQ."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

import celery_kit
from celery_kit.presets import Preset
from celery_kit.testing import WorkerProcess

from .._brokers import drop_queue
from .conftest import ROOT
from .preset_app import TASK_NAME, Pong, build_preset_app

pytestmark = pytest.mark.integration
TIMEOUT = 30
#: The worker imports the celery_kit under test, wherever it is.
PYTHONPATH = os.pathsep.join([str(Path(celery_kit.__file__).resolve().parents[1]), str(ROOT)])


def _is_quorum(app: Celery, queue: str) -> bool:
    """Re-declaring a quorum queue as classic is refused with PRECONDITION_FAILED."""
    with app.connection_for_write() as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )
        except conn.channel_errors as exc:
            return "x-queue-type" in str(exc)
        finally:
            channel.close()
    return False


def _cleanup(app: Celery, broker: str, *queues: str) -> None:
    for queue in queues:
        drop_queue(app, queue)
    if broker == "rabbitmq":
        with app.connection_for_write() as conn:
            for queue in queues:
                channel = conn.channel()
                channel.exchange_delete(queue)
                channel.close()


@pytest.fixture
def preset_worker(
    request: pytest.FixtureRequest, redis_url: str, redis_client: redis.Redis, unique: str
) -> Iterator[tuple[Celery, WorkerProcess, str]]:
    preset, broker = request.param
    broker_url = redis_url if broker == "redis" else request.getfixturevalue("amqp_url")
    queue = f"kit-presets-{unique}"
    app = build_preset_app(preset, broker_url, redis_url, queue)
    worker = WorkerProcess(
        "tests.integration.preset_app",
        queues=[queue],
        concurrency=1,
        cwd=ROOT,
        env={
            "KIT_PRESET": preset,
            "KIT_TEST_BROKER_URL": broker_url,
            "KIT_TEST_BACKEND_URL": redis_url,
            "KIT_TEST_QUEUE": queue,
            "PYTHONPATH": PYTHONPATH,
        },
    )
    try:
        worker.start()
        yield app, worker, queue
        worker.stop()
        assert drop_queue(app, queue) == 0, "messages left in the queue after the worker stopped"
    finally:
        worker.stop()
        _cleanup(app, broker, queue, f"{queue}-default")
        app.close()


@pytest.mark.parametrize(
    "preset_worker",
    [(preset.value, broker) for preset in Preset for broker in ("redis", "rabbitmq")],
    ids=lambda p: f"{p[0]}-{p[1]}",
    indirect=True,
)
def test_preset_worker_consumes_a_routed_validated_task(
    preset_worker: tuple[Celery, WorkerProcess, str],
) -> None:
    app, worker, queue = preset_worker
    preset = app.conf.celery_kit_preset
    task = app.tasks[TASK_NAME]
    result = task.delay(n="3")  # validated (and coerced) in the caller
    pong = task.get_result(result, timeout=TIMEOUT)
    result.forget()
    assert isinstance(pong, Pong)
    assert pong.n == 3
    # The worker runs with the preset's settings, not Celery's defaults...
    assert pong.preset == preset
    assert pong.acks_late is (preset == Preset.RELIABLE.value)
    assert pong.prefetch == (4 if preset == Preset.LOW_LATENCY.value else 1)
    assert pong.transport_options == dict(app.conf.broker_transport_options)
    # ...and the task reached it through the route built from queues=.
    assert pong.routing_key == queue
    if app.conf.broker_url.startswith("redis"):
        assert pong.transport_options["visibility_timeout"] >= 3600
    if preset == Preset.RELIABLE.value and app.conf.broker_url.startswith("amqp"):
        assert pong.transport_options["confirm_publish"] is True
        assert "Global QoS is disabled" in worker.log()
        assert _is_quorum(app, queue)
