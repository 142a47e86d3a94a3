"""Alerting from a real prefork worker to real local HTTP servers."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_kit.testing import AlertReceiver, WorkerProcess, read_metric

from .._support import free_port, wait_for
from ..conftest import RUN_ID
from .alerted_app import build_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
SECRET = f"sk-{uuid.uuid4().hex}"
DB_PASSWORD = f"pw-{uuid.uuid4().hex}"


class Alerted:
    def __init__(
        self, app: Celery, worker: WorkerProcess, webhook: AlertReceiver, hanging: AlertReceiver, port: int
    ) -> None:
        self.app, self.worker, self.webhook, self.hanging, self.port = app, worker, webhook, hanging, port

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(name, labels, port=self.port)


@pytest.fixture(scope="module")
def hold() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


@pytest.fixture(scope="module")
def alerted(redis_url: str, hold: threading.Event) -> Iterator[Alerted]:
    webhook, hanging = AlertReceiver(), AlertReceiver(hold)
    prefix = f"kit-{RUN_ID}-alerts"
    queue = f"{prefix}-q"
    port = free_port()
    env = {
        "KIT_AL_BROKER_URL": redis_url,
        "KIT_AL_QUEUE": queue,
        "KIT_AL_STATE_URL": redis_url,
        "KIT_AL_PREFIX": prefix,
        "KIT_AL_WEBHOOK": webhook.url,
        "KIT_AL_HANGING": hanging.url,
        "KIT_AL_METRICS_PORT": str(port),
        "PYTHONPATH": str(ROOT),
    }
    app = build_app(redis_url, queue, redis_url, prefix, webhook.url, hanging.url, 0)
    worker = WorkerProcess("tests.integration.alerted_app", queues=[queue], concurrency=2, cwd=ROOT, env=env)
    worker.start()
    try:
        yield Alerted(app, worker, webhook, hanging, port)
    finally:
        hold.set()
        worker.stop()
        webhook.close()
        hanging.close()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_a_burst_of_200_failures_sends_one_alert_and_one_digest(alerted: Alerted) -> None:
    results = [alerted.app.tasks["al.boom"].delay(n) for n in range(200)]
    for result in results:
        result.get(timeout=TIMEOUT, propagate=False)
    assert all(r.state == "FAILURE" for r in results)
    # The window is 8 s: the digest follows when it ends.
    wait_for(lambda: len(alerted.webhook.of("al.boom")) >= 2, timeout=40)
    time.sleep(2)  # nothing else may follow
    alerts = alerted.webhook.of("al.boom")
    assert [(a.digest, a.occurrences, a.kind.value) for a in alerts] == [
        (False, 1, "final_failure"),
        (True, 199, "final_failure"),
    ]
    assert alerts[0].exception_type == "ValueError"
    assert alerts[0].task_id in {r.id for r in results}
    assert alerts[1].window_seconds == 8
    assert alerted.metric("celery_kit_alerts_total", sink="webhook", result="sent") >= 2


def test_hard_timeout_and_a_killed_pool_process_alert_once_each(alerted: Alerted, redis_client: Any) -> None:
    stubborn = alerted.app.tasks["al.stubborn"].delay()
    stubborn.get(timeout=TIMEOUT, propagate=False)
    marker = f"kit-{RUN_ID}-al-victim"
    victim = alerted.app.tasks["al.victim"].delay(marker)
    wait_for(lambda: redis_client.get(marker) is not None)
    os.kill(int(redis_client.get(marker)), signal.SIGKILL)
    victim.get(timeout=TIMEOUT, propagate=False)
    wait_for(lambda: alerted.webhook.of("al.stubborn") and alerted.webhook.of("al.victim"))
    time.sleep(1.5)
    assert [(a.kind.value, a.task_id) for a in alerted.webhook.of("al.stubborn")] == [
        ("hard_timeout", stubborn.id)
    ]
    assert [(a.kind.value, a.task_id) for a in alerted.webhook.of("al.victim")] == [
        ("worker_lost", victim.id)
    ]


def test_secrets_and_password_fields_never_reach_a_sink(alerted: Alerted) -> None:
    account = {"user": "ada", "api_secret": SECRET, "db_password": DB_PASSWORD}
    loud = alerted.app.tasks["al.secret"].delay(account)
    quiet = alerted.app.tasks["al.quiet"].delay(account)
    loud.get(timeout=TIMEOUT, propagate=False)
    quiet.get(timeout=TIMEOUT, propagate=False)
    wait_for(lambda: alerted.webhook.of("al.secret") and alerted.webhook.of("al.quiet"))
    (opted_in,) = alerted.webhook.of("al.secret")
    assert opted_in.payload == {"user": "ada", "api_secret": "**********", "db_password": "**********"}
    assert alerted.webhook.of("al.quiet")[0].payload is None
    everything = b"".join(alerted.webhook.raw + alerted.hanging.raw).decode() + alerted.worker.log()
    assert SECRET not in everything
    assert DB_PASSWORD not in everything


def test_a_hanging_sink_neither_slows_nor_fails_the_task(alerted: Alerted, hold: threading.Event) -> None:
    # Every alert above also went to the hanging sink, which holds each request open.
    # Tasks kept finishing meanwhile; a new one does too, while a request is held.
    wait_for(lambda: alerted.hanging.pending > 0)
    result = alerted.app.tasks["al.boom"].delay(-1)
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert alerted.hanging.pending > 0  # the sink was still hanging when the task finished
    wait_for(lambda: alerted.metric("celery_kit_alerts_total", sink="hanging", result="failed") >= 1)
