"""The Celery app the hostile-input workers import (``-A tests.faults.hostile_app``).

Configured by the ``reliable`` preset -- late acknowledgement, requeue on a lost worker --
because that is where a poison message would loop: a message that is neither acked nor
rejected comes back. Tasks record every attempt and every body execution in Redis, so a
test counts what really ran instead of trusting logs. ``instrument`` wires JSON logs,
metrics on a port of the test's choosing and, when a webhook is given, alerts.
"""

from __future__ import annotations

import os
from typing import Annotated

import redis
from celery import Celery
from pydantic import BaseModel, Field, SecretStr

from celery_kit import instrument, validated_task
from celery_kit.alerts import Alerting, WebhookSink
from celery_kit.presets import reliable

from .._support import count_attempts


class Account(BaseModel):
    """A payload holding a secret the worker needs and nothing else may show."""

    user: str
    api_key: SecretStr


class Session(BaseModel):
    """A result that carries the secret back: the result backend must get it masked."""

    user: str
    token: SecretStr


def build_app(
    broker_url: str,
    backend_url: str,
    queue: str,
    state_url: str,
    prefix: str,
    *,
    metrics_port: int = 0,
    webhook: str | None = None,
) -> Celery:
    """The hostile-input app; ``prefix`` starts every Redis key it writes."""
    app = Celery(f"kit_hostile_{prefix}", set_as_current=False)
    app.config_from_object(
        reliable(
            broker_url,
            backend_url,
            default_queue=queue,
            soft_time_limit=10,
            time_limit=20,
            result_expires=600,
        )
    )
    alerts = None
    if webhook:
        alerts = Alerting(
            sinks=[WebhookSink(webhook, timeout=5, retries=1)], window=5, rate_limit_per_minute=600
        )
    instrument(app, json_logs=True, metrics_port=metrics_port, alerts=alerts, health=False)
    state = redis.Redis.from_url(state_url)

    count_attempts(app, state, prefix)

    @validated_task(app, shared=False, name="hostile.count")
    def count(key: str, note: Annotated[str, Field(max_length=1000)] = "") -> int:
        """The good task: counts its executions under ``key``."""
        return int(state.incr(f"{prefix}:runs:{key}"))

    @validated_task(app, shared=False, name="hostile.login", log_payload=True, alert_payload=True)
    def login(account: Account) -> Session:
        state.incr(f"{prefix}:runs:login:{account.user}")
        return Session(user=account.user, token=account.api_key)

    @validated_task(app, shared=False, name="hostile.locked", log_payload=True, alert_payload=True)
    def locked(account: Account) -> None:
        state.incr(f"{prefix}:runs:locked:{account.user}")
        raise PermissionError(f"account {account.user} is locked")

    @validated_task(app, shared=False, name="hostile.leaky", alert_payload=True)
    def leaky(account: Account) -> None:
        """Careless task code: pastes the secret into its error (issue 15)."""
        state.incr(f"{prefix}:runs:leaky:{account.user}")
        try:
            raise KeyError(f"no session for {account.api_key.get_secret_value()}")
        except KeyError as exc:
            raise ValueError(f"bad token {account.api_key.get_secret_value()}") from exc

    return app


if "KIT_HOSTILE_BROKER_URL" in os.environ:  # imported by a worker process or the CLI
    app = build_app(
        os.environ["KIT_HOSTILE_BROKER_URL"],
        os.environ["KIT_HOSTILE_BACKEND_URL"],
        os.environ["KIT_HOSTILE_QUEUE"],
        os.environ["KIT_HOSTILE_STATE_URL"],
        os.environ["KIT_HOSTILE_PREFIX"],
        metrics_port=int(os.environ.get("KIT_HOSTILE_METRICS_PORT", "0")),
        webhook=os.environ.get("KIT_HOSTILE_WEBHOOK") or None,
    )
