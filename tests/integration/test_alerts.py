"""Alerting from a real prefork worker to real local HTTP servers."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_kit.testing import AlertReceiver, WorkerProcess, read_metric

from .._support import free_port, json_lines, wait_for
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

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.worker.log())


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
    # Reported from the main process, yet with the message's own context, not a blank one.
    queue = alerted.app.conf.task_default_queue
    for alert in (*alerted.webhook.of("al.stubborn"), *alerted.webhook.of("al.victim")):
        assert (alert.queue, alert.root_id) == (queue, alert.task_id), alert.kind


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


def test_an_invalid_payload_from_another_producer_alerts_once_without_its_values(
    alerted: Alerted,
) -> None:
    secret, password, user = (f"{kind}-{uuid.uuid4().hex}" for kind in ("sk", "pw", "user"))
    # Published around the caller-side validation, as another producer would.
    result = alerted.app.send_task(
        "al.typed",
        kwargs={"account": {"user": {"name": user}, "api_secret": secret, "db_password": password}},
    )
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    # The hanging sink is the last in line: once it has the alert, every sink has.
    wait_for(lambda: [a for a in alerted.hanging.alerts if a.task_name == "al.typed"])
    time.sleep(1.5)  # nothing else may follow
    (alert,) = alerted.webhook.of("al.typed")
    assert (alert.kind.value, alert.task_id, alert.digest, alert.occurrences) == (
        "invalid_payload",
        result.id,
        False,
        1,
    )
    assert (alert.exception_type, alert.reason) == ("PayloadValidationError", "invalid payload")
    assert alert.queue == alerted.app.conf.task_default_queue
    assert alert.payload is None  # the task opted in, but an invalid payload is never included
    sent = b"".join(raw for raw in alerted.webhook.raw + alerted.hanging.raw if b"al.typed" in raw).decode()
    for value in (secret, password, user):
        assert value not in sent
        assert value not in alerted.worker.log()


def test_a_hanging_sink_neither_slows_nor_fails_the_task(alerted: Alerted) -> None:
    # The hanging sink holds every request open for 10 s; the worker's webhook sink gives
    # up after its 1 s timeout. Eight distinct incidents: eight alerts, none held back.
    names = [f"Hang{n}x{uuid.uuid4().hex[:6]}" for n in range(8)]
    failed_before = alerted.metric("celery_kit_alerts_total", sink="hanging", result="failed")
    results = [alerted.app.tasks["al.kinds"].delay(name) for name in names]
    for result in results:
        result.get(timeout=TIMEOUT, propagate=False)
    assert all(r.state == "FAILURE" for r in results)

    def received(receiver: AlertReceiver) -> set[str | None]:
        return {a.exception_type for a in receiver.alerts if a.task_name == "al.kinds"}

    wait_for(lambda: received(alerted.webhook) == set(names))
    wait_for(lambda: received(alerted.hanging) == set(names))  # each one held open
    wait_for(
        lambda: (
            alerted.metric("celery_kit_alerts_total", sink="hanging", result="failed")
            >= failed_before + len(names)
        )
    )
    assert alerted.metric("celery_kit_alerts_total", sink="hanging", result="sent") == 0

    # What the worker measured: the attempts took milliseconds ...
    assert alerted.metric("celery_task_duration_seconds_count", task="al.kinds") == len(names)
    assert alerted.metric("celery_task_duration_seconds_sum", task="al.kinds") < 1.0
    # ... and no pool process waited on a sink after an attempt either: delivering inline
    # would keep each of the two processes busy >= 1 s per alert, so the last of the eight
    # attempts would start >= 3 s after the first.
    ids = {r.id for r in results}
    starts = [
        datetime.fromisoformat(line["timestamp"])
        for line in alerted.log_lines()
        if line.get("event") == "task started" and line.get("task_id") in ids
    ]
    assert len(starts) == len(names)
    assert (max(starts) - min(starts)).total_seconds() < 2.0
