"""An app that alerts to local webhooks, for the alerting integration tests."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, SecretStr

from celery_kit import instrument, validated_task
from celery_kit.alerts import Alerting, LogSink, WebhookSink


class Account(BaseModel):
    user: str
    api_secret: SecretStr
    db_password: str


def build_app(
    broker_url: str, queue: str, state_url: str, prefix: str, webhook: str, hanging: str, metrics_port: int
) -> Celery:
    app = Celery(f"kit_alerted_{prefix}", broker=broker_url, backend=state_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_soft_time_limit=20,
        task_time_limit=30,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    instrument(
        app,
        json_logs=True,
        metrics_port=metrics_port,
        alerts=Alerting(
            sinks=[
                LogSink(),
                WebhookSink(webhook, timeout=5, retries=1),
                WebhookSink(hanging, timeout=1, retries=0, name="hanging"),
            ],
            window=8,
            redis_url=state_url,
            redis_prefix=f"{prefix}:alerts",
            rate_limit_per_minute=600,
        ),
    )
    state = redis.Redis.from_url(state_url)

    @validated_task(app, shared=False, name="al.boom")
    def boom(n: int) -> None:
        raise ValueError(f"boom {n}")

    @validated_task(app, shared=False, name="al.stubborn", soft_time_limit=0.5, time_limit=1.5)
    def stubborn() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                continue

    @validated_task(app, shared=False, name="al.victim")
    def victim(marker: str) -> None:
        state.set(marker, os.getpid())
        time.sleep(30)

    @validated_task(app, shared=False, name="al.secret", alert_payload=True)
    def secret(account: Account) -> None:
        raise PermissionError(f"account {account.user} locked")

    @validated_task(app, shared=False, name="al.quiet")
    def quiet(account: Account) -> None:
        raise PermissionError("locked")

    @validated_task(app, shared=False, name="al.typed", alert_payload=True)
    def typed(account: Account) -> None: ...

    @validated_task(app, shared=False, name="al.kinds")
    def kinds(name: str) -> None:
        # An exception class of its own per name: each call is its own incident, alerted
        # at once rather than held for a digest.
        raise type(name, (Exception,), {})(f"failure {name}")

    return app


if "KIT_AL_BROKER_URL" in os.environ:  # imported by a worker process
    app = build_app(
        os.environ["KIT_AL_BROKER_URL"],
        os.environ["KIT_AL_QUEUE"],
        os.environ["KIT_AL_STATE_URL"],
        os.environ["KIT_AL_PREFIX"],
        os.environ["KIT_AL_WEBHOOK"],
        os.environ["KIT_AL_HANGING"],
        int(os.environ["KIT_AL_METRICS_PORT"]),
    )
