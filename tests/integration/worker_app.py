"""The Celery app the integration workers import (``-A tests.integration.worker_app``).

``build_app`` makes one app per broker under test; the worker builds its own from the
environment. Tasks record their side effects in Redis, so tests count executions
instead of trusting return values.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from pydantic import BaseModel, Field
from tenacity import wait_fixed

from celery_kit import (
    EventType,
    PermanentError,
    RetryPolicy,
    TaskEvent,
    ValidatedTask,
    dispatcher_for,
    validated_task,
)

from .._support import count_attempts


class Order(BaseModel):
    order_id: int = Field(gt=0)
    items: list[str]
    note: str = ""


class Receipt(BaseModel):
    order_id: int
    count: int


class SlowJob(BaseModel):
    key: str
    seconds: float


def build_app(broker_url: str, backend_url: str, queue: str, state_url: str, prefix: str) -> Celery:
    """An app with the integration tasks; ``prefix`` starts every Redis key it writes."""
    app = Celery(f"kit_integration_{prefix}", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        task_acks_late=True,  # "acknowledged" must mean after the outcome is known
        task_soft_time_limit=20,
        task_time_limit=30,
    )
    state = redis.Redis.from_url(state_url)

    count_attempts(app, state, prefix)

    @dispatcher_for(app).subscribe
    def record_event(event: TaskEvent) -> None:
        if event.type is EventType.SUCCEEDED:
            state.incr(f"{prefix}:succeeded:{event.task_id}")
            return
        if event.type not in (EventType.RETRYING, EventType.FAILED):
            return
        assert event.kind is not None
        state.rpush(
            f"{prefix}:events:{event.task_id}",
            json.dumps(
                {
                    "type": event.type.value,
                    "kind": event.kind.value,
                    "final": event.final,
                    "reason": event.reason,
                    "exception": type(event.exception).__name__,
                    "retries": event.retries,
                }
            ),
        )

    @validated_task(app, shared=False, name="kit.receipt")
    def receipt(order: Order) -> Receipt:
        return Receipt(order_id=order.order_id, count=len(order.items))

    @validated_task(app, shared=False, name="kit.make_order")
    def make_order(order_id: int, n: int) -> Order:
        return Order(order_id=order_id, items=[f"item-{i}" for i in range(n)])

    @validated_task(
        app,
        shared=False,
        name="kit.flaky",
        retry=RetryPolicy(retry_on=(ConnectionError,), max_retries=4, backoff=0.05, jitter=False),
    )
    def flaky(key: str, fail_times: int) -> int:
        calls = int(state.incr(f"{prefix}:calls:{key}"))
        if calls <= fail_times:
            raise ConnectionError(f"transient failure {calls}")
        return calls

    @validated_task(
        app, shared=False, name="kit.permanent", retry=RetryPolicy(retry_on=(Exception,), max_retries=4)
    )
    def permanent(key: str) -> None:
        state.incr(f"{prefix}:calls:{key}")
        raise PermanentError("record is gone")

    @validated_task(
        app,
        shared=False,
        name="kit.deadline",
        retry=RetryPolicy(retry_on=ConnectionError, max_retries=None, deadline=1.0, wait=wait_fixed(0.3)),
    )
    def deadline(key: str) -> None:
        state.incr(f"{prefix}:calls:{key}")
        raise ConnectionError("still down")

    # Written for plain Celery: the kit must leave them as Celery runs them.
    @app.task(base=ValidatedTask, shared=False, bind=True, name="plain.rescale")  # type: ignore[untyped-decorator]
    def rescale(self: ValidatedTask, foo, bar):  # type: ignore[no-untyped-def]
        state.incr(f"{prefix}:calls:rescale:{self.request.id}")
        if not self.request.retries:
            raise self.retry(kwargs={"foo": foo * 10}, countdown=0)
        return [foo, bar, type(bar).__name__]

    @app.task(
        base=ValidatedTask,
        shared=False,
        name="plain.autoretry",
        autoretry_for=(ConnectionError,),
        retry_kwargs={"max_retries": 2, "countdown": 0},
    )
    def autoretry(key):  # type: ignore[no-untyped-def]
        state.incr(f"{prefix}:calls:{key}")
        raise ConnectionError("still down")

    @validated_task(app, shared=False, name="kit.slow", soft_time_limit=1, time_limit=10)
    def slow(job: SlowJob) -> str:
        deadline = time.monotonic() + job.seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
        return "finished"

    @slow.on_soft_timeout
    def release(job: SlowJob) -> None:
        state.incr(f"{prefix}:cleanup:{job.key}")

    return app


if "KIT_TEST_BROKER_URL" in os.environ:  # imported by a worker process
    app = build_app(
        os.environ["KIT_TEST_BROKER_URL"],
        os.environ["KIT_TEST_BACKEND_URL"],
        os.environ["KIT_TEST_QUEUE"],
        os.environ["KIT_TEST_STATE_URL"],
        os.environ["KIT_TEST_PREFIX"],
    )
