"""The app of the dead-letter tests (``-A tests.integration.dead_letter_app``).

Every task records its runs in Redis (``<prefix>:runs:<key>``: "task id pid" per run) so
a test counts executions; ``dlq.fixable`` fails until the test "deploys the fix" (sets
``<prefix>:fixed``). A user observer subscribed after the kit's own can hold a pool
process right after its dead letter was written, so a test can kill it there.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, SecretStr
from tenacity import wait_fixed

from celery_kit import Observer, PermanentError, RetryPolicy, TaskEvent, instrument, validated_task

#: Retention of the test store: small, so the retention test is quick.
MAX_ENTRIES = 8


class Order(BaseModel):
    ref: str
    amount: int
    token: SecretStr


def build_app(
    broker_url: str,
    backend_url: str,
    queue: str,
    state_url: str,
    prefix: str,
    metrics_port: int = 0,
    *,
    worker: bool = False,
) -> Celery:
    app = Celery(f"kit_dlq_{prefix}", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=20,
        task_time_limit=30,
        celery_kit_dead_letters=True,
        celery_kit_dead_letter_prefix=f"{prefix}-dlq",
        celery_kit_dead_letter_max_entries=MAX_ENTRIES,
        celery_kit_dead_letter_refresh=1,
    )
    state = redis.Redis.from_url(state_url)

    def record(key: str, task_id: str) -> int:
        return int(state.rpush(f"{prefix}:runs:{key}", f"{task_id} {os.getpid()}"))

    class HoldAfterWrite(Observer):
        """Holds the pool process after the kit wrote the dead letter of ``dlq.held``."""

        def on_failed(self, event: TaskEvent) -> None:
            if event.task_name == "dlq.held" and event.final and record("held-written", "x") == 1:
                time.sleep(60)  # the first time only: the test kills this process here

    if worker and broker_url.startswith("amqp"):
        _write_slowly_once(record)
    if worker:
        instrument(
            app,
            logging=False,
            alerts=None,
            health=False,
            metrics_port=metrics_port,
            observers=[HoldAfterWrite()],
        )

    @validated_task(app, shared=False, name="dlq.permanent", bind=True)
    def permanent(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        raise PermanentError(f"order {ref} cannot be shipped")

    @validated_task(
        app,
        shared=False,
        name="dlq.flaky",
        bind=True,
        retry=RetryPolicy(retry_on=(ConnectionError,), max_retries=2, wait=wait_fixed(0.1)),
    )
    def flaky(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        raise ConnectionError("payment gateway down")

    @validated_task(app, shared=False, name="dlq.fixable", bind=True)
    def fixable(self: Any, payload: Order) -> str:
        record(payload.ref, self.request.id)
        if not state.exists(f"{prefix}:fixed"):
            raise ValueError(
                f"bug: cannot handle {payload.amount} (token {payload.token.get_secret_value()})"
            )
        return payload.ref

    @validated_task(
        app, shared=False, name="dlq.lost", bind=True, acks_late=True, reject_on_worker_lost=False
    )
    def lost(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        os.kill(os.getpid(), signal.SIGKILL)

    @validated_task(
        app, shared=False, name="dlq.slow_write", bind=True, acks_late=True, reject_on_worker_lost=True
    )
    def slow_write(self: Any, ref: str) -> None:
        if record(ref, self.request.id) == 1 and broker_url.startswith("redis"):
            # The first time, every write to the broker (the dead letter's) waits from now
            # on: the test kills this process while it is in that write.
            paused = redis.Redis.from_url(broker_url)
            paused.execute_command("CLIENT", "PAUSE", "20000", "WRITE")  # type: ignore[no-untyped-call]
            paused.close()
        raise PermanentError("fails for good; the test kills the process while it writes")

    @validated_task(app, shared=False, name="dlq.soft_timeout", bind=True, soft_time_limit=0.5, time_limit=10)
    def soft_timeout(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        time.sleep(5)

    @validated_task(
        app, shared=False, name="dlq.hard_timeout", bind=True, soft_time_limit=0.5, time_limit=1.5
    )
    def hard_timeout(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        try:
            time.sleep(5)
        except SoftTimeLimitExceeded:
            time.sleep(5)  # ignores the soft limit: killed at the hard one

    @validated_task(app, shared=False, name="dlq.held", bind=True, acks_late=True, reject_on_worker_lost=True)
    def held(self: Any, ref: str) -> None:
        record(ref, self.request.id)
        raise PermanentError("fails for good; the test kills the process after the write")

    return app


def _write_slowly_once(record: Any) -> None:
    """Fault injection for the kill-mid-write test on RabbitMQ: the first entry of
    ``dlq.slow_write`` is published (and confirmed) to the stream, then its writer stalls
    before it returns -- the test kills it there, between the broker having the record and
    the message being acknowledged. Redis pauses its writes instead (see the task)."""
    from celery_kit.deadletter import _amqp

    put = _amqp.StreamBackend.put

    def stalling_put(self: Any, entry: Any, *args: Any, **kwargs: Any) -> Any:
        result = put(self, entry, *args, **kwargs)
        if entry.task_name == "dlq.slow_write" and record("slow-write-stalled", entry.id) == 1:
            time.sleep(60)
        return result

    _amqp.StreamBackend.put = stalling_put  # type: ignore[method-assign]


if os.environ.get("KIT_DLQ_PREFIX"):  # imported by the worker (-A): build from the environment
    app = build_app(
        os.environ["KIT_DLQ_BROKER_URL"],
        os.environ["KIT_DLQ_BACKEND_URL"],
        os.environ["KIT_DLQ_QUEUE"],
        os.environ["KIT_DLQ_STATE_URL"],
        os.environ["KIT_DLQ_PREFIX"],
        int(os.environ["KIT_DLQ_METRICS_PORT"]),
        worker=True,
    )
