"""An app with a user's own Observer (``-A tests.integration.user_observer_app``).

The observer records every hook it gets in Redis, so the test sees what a real prefork
worker called, in which process.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.worker import WorkController

from celery_kit import Observer, PermanentError, TaskEvent, instrument, validated_task


class RedisLedger(Observer):
    """What a team writes to feed its own system: one Redis entry per hook call."""

    def __init__(self, state: redis.Redis, prefix: str) -> None:
        self.state = state
        self.prefix = prefix

    def _log(self, entry: str) -> None:
        self.state.rpush(f"{self.prefix}:ledger", f"{entry}@{os.getpid()}")

    def on_worker_init(self, worker: Any) -> None:
        self._log("worker_init")

    def on_worker_ready(self, worker: Any) -> None:
        self._log(f"worker_ready:{isinstance(worker, WorkController)}")

    def on_worker_shutdown(self, worker: Any) -> None:
        self._log("worker_shutdown")

    def on_process_init(self) -> None:
        self._log("process_init")

    def on_process_shutdown(self) -> None:
        self._log("process_shutdown")

    def on_succeeded(self, event: TaskEvent) -> None:
        self._log(f"succeeded:{event.task_id}")

    def on_failed(self, event: TaskEvent) -> None:
        assert event.kind is not None
        self._log(f"failed:{event.task_id}:{event.kind.value}:{event.final}")


def build_app(broker_url: str, state_url: str, queue: str, prefix: str) -> Celery:
    app = Celery(f"kit_observer_{prefix}", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        broker_connection_retry_on_startup=True,
        task_soft_time_limit=10,
        task_time_limit=20,
    )
    ledger = RedisLedger(redis.Redis.from_url(state_url), prefix)
    instrument(app, logging=False, metrics=False, alerts=None, health=False, observers=[ledger])

    @validated_task(app, shared=False, name="obs.double")
    def double(n: int) -> int:
        if n < 0:
            raise PermanentError("negative")
        return n * 2

    return app


if "KIT_TEST_BROKER_URL" in os.environ:  # imported by a worker process
    app = build_app(
        os.environ["KIT_TEST_BROKER_URL"],
        os.environ["KIT_TEST_STATE_URL"],
        os.environ["KIT_TEST_QUEUE"],
        os.environ["KIT_TEST_PREFIX"],
    )
