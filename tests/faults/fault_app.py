"""The app the fault-injection workers import (``-A tests.faults.fault_app``).

It runs under :func:`celery_kit.presets.reliable` -- late acks, requeue on a lost worker,
one reserved message per process, quorum queues and publisher confirms on RabbitMQ -- the
configuration whose promise (at-least-once: nothing lost) the fault suite checks.

Each task keeps a ledger in the *shared* Redis (never in the broker a test kills): a hash
of executions started and a hash of executions completed, both keyed by task id, so a test
counts lost and duplicated tasks exactly instead of trusting return values or results.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery

from celery_kit import ValidatedTask, instrument, presets, validated_task

#: Redis transport options for tests that must see unacknowledged messages restored in
#: seconds rather than minutes: the restore sweep runs every second (kombu's default is
#: every ~100 s).
FAST_SWEEP = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
#: ... and a visibility timeout still above the task time limit, as ``presets.check`` demands.
FAST_RESTORE = {**FAST_SWEEP, "visibility_timeout": 8}


def build_app(
    broker_url: str,
    queue: str,
    state_url: str,
    prefix: str,
    *,
    transport_options: dict[str, Any] | None = None,
    metrics_port: int = 0,
    time_limit: float = 6.0,
) -> Celery:
    """A ``reliable``-preset app whose tasks record their executions under ``prefix``."""
    app = Celery(f"kit_faults_{prefix}", set_as_current=False)
    overrides: dict[str, Any] = {
        "task_ignore_result": True,
        "broker_connection_max_retries": None,  # keep reconnecting for as long as the test needs
    }
    if transport_options:
        overrides["broker_transport_options"] = transport_options
    app.config_from_object(
        presets.reliable(
            broker_url,
            default_queue=queue,
            soft_time_limit=time_limit - 1,
            time_limit=time_limit,
            eta_horizon=0,
            **overrides,
        )
    )
    instrument(
        app, logging=False, alerts=None, health=False, metrics=metrics_port > 0, metrics_port=metrics_port
    )
    state = redis.Redis.from_url(state_url)
    started, completed, running = f"{prefix}:started", f"{prefix}:completed", f"{prefix}:running"

    @validated_task(app, shared=False, bind=True, name="faults.work")
    def work(self: ValidatedTask, n: int, seconds: float = 0.0) -> int:
        task_id = self.request.id
        pipe = state.pipeline(transaction=False)
        pipe.hincrby(started, task_id, 1)
        pipe.hset(running, task_id, f"{os.getpid()} {time.time()}")
        pipe.execute()
        if seconds:
            time.sleep(seconds)
        pipe = state.pipeline(transaction=False)
        pipe.hincrby(completed, task_id, 1)
        pipe.hdel(running, task_id)
        pipe.execute()
        return n

    return app


def _transport_options() -> dict[str, Any] | None:
    """``KIT_FAULT_VISIBILITY``: unset (the preset's), ``computed`` or seconds, both swept fast."""
    visibility = os.environ.get("KIT_FAULT_VISIBILITY")
    if visibility is None:
        return None
    if visibility == "computed":
        return dict(FAST_SWEEP)
    return {**FAST_SWEEP, "visibility_timeout": float(visibility)}


if "KIT_FAULT_BROKER_URL" in os.environ:  # imported by a worker process
    app = build_app(
        os.environ["KIT_FAULT_BROKER_URL"],
        os.environ["KIT_FAULT_QUEUE"],
        os.environ["KIT_FAULT_STATE_URL"],
        os.environ["KIT_FAULT_PREFIX"],
        transport_options=_transport_options(),
        metrics_port=int(os.environ.get("KIT_FAULT_METRICS_PORT", "0")),
        time_limit=float(os.environ.get("KIT_FAULT_TIME_LIMIT", "6")),
    )
