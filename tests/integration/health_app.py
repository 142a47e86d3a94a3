"""The app the health integration workers and beat import (``-A tests.integration.health_app``).

Configured from the environment, so each test points its own worker (or beat) at its own
broker, queue and state files.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from celery import Celery, signals

from celery_kit import health, validated_task


def build_app(
    broker_url: str,
    queue: str,
    state_file: str | None = None,
    beat_file: str | None = None,
    interval: float = 0.5,
) -> Celery:
    app = Celery(f"kit_health_{queue}", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        beat_schedule={"tick": {"task": "health.noop", "schedule": 0.5, "options": {"queue": queue}}},
    )
    health.install(app, state_file=state_file, beat_state_file=beat_file, interval=interval)

    @validated_task(app, name="health.noop", shared=False, soft_time_limit=5, time_limit=10)
    def noop() -> None:
        return None

    @validated_task(app, name="health.sleep", shared=False, soft_time_limit=20, time_limit=30)
    def sleep(seconds: float) -> None:
        time.sleep(seconds)

    @validated_task(app, name="health.limited", shared=False, time_limit=4)
    def limited(gate: str) -> None:
        """Run past its limit (which a solo worker cannot enforce) until ``gate`` exists (60 s at most)."""
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    @validated_task(app, name="health.hold", shared=False, acks_late=True, soft_time_limit=90, time_limit=120)
    def hold(gate: str) -> None:
        """Run -- reserved, active, not acknowledged -- until the file ``gate`` exists (60 s at most)."""
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.05)

    return app


if "KIT_HEALTH_BROKER_URL" in os.environ:  # imported by a worker or beat process
    app = build_app(
        os.environ["KIT_HEALTH_BROKER_URL"],
        os.environ["KIT_HEALTH_QUEUE"],
        os.environ.get("KIT_HEALTH_FILE"),
        os.environ.get("KIT_HEALTH_BEAT_FILE"),
    )
    if os.environ.get("KIT_HEALTH_BEAT_GATE"):
        gate = os.environ["KIT_HEALTH_BEAT_GATE"]

        # Stands in for a lock-holding scheduler such as RedBeat: a beat_init receiver
        # connected after celery_kit's blocks until the "lock" (a file) exists.
        def _wait_for_lock(**_: Any) -> None:
            while not os.path.exists(gate):
                threading.Event().wait(0.1)

        signals.beat_init.connect(_wait_for_lock, weak=False)
