"""The app of the uniqueness tests (``-A tests.integration.unique_app``).

Tasks record every execution in Redis and block until the test lets them go (a list the
test pushes to), so a test decides when a task ends instead of sleeping. The lock store
is a private Redis of the test module, so its round trips can be counted.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from pydantic import BaseModel
from tenacity import wait_fixed

from celery_kit import RetryPolicy, Unique, instrument, validated_task

#: The bound after a kill, short so the kill tests stay short.
LEASE = 2.0
TTL = 120.0


class Account(BaseModel):
    user_id: str
    note: str = ""


class Hold(BaseModel):
    user_id: str
    wait: float = 30.0


def build_app(
    broker_url: str, backend_url: str, queue: str, lock_url: str, prefix: str, metrics_port: int = 0
) -> Celery:
    app = Celery(f"kit_unique_{prefix}", broker=broker_url, backend=backend_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        result_expires=600,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=40,
        task_time_limit=50,
        celery_kit_unique_url=lock_url,
    )
    if metrics_port:  # the worker: its metrics count duplicates refused on its side
        instrument(app, logging=False, alerts=None, health=False, metrics_port=metrics_port)
    state = redis.Redis.from_url(backend_url)

    def record(kind: str, task_id: str, user_id: str) -> int:
        state.rpush(f"{prefix}:{kind}:{user_id}", f"{task_id} {os.getpid()}")
        return int(state.llen(f"{prefix}:{kind}:{user_id}"))

    def hold(user_id: str, wait: float) -> None:
        state.blpop([f"{prefix}:go:{user_id}"], timeout=wait)

    @validated_task(
        app, shared=False, name="unique.hold", unique=Unique(on=("user_id",), ttl=TTL, lease=LEASE), bind=True
    )
    def hold_task(self: Any, payload: Hold) -> str:
        record("started", self.request.id, payload.user_id)
        hold(payload.user_id, payload.wait)
        return payload.user_id

    @validated_task(
        app,
        shared=False,
        name="unique.flaky",
        bind=True,
        unique=Unique(on=("user_id",), ttl=TTL, lease=LEASE),
        retry=RetryPolicy(retry_on=(ConnectionError,), max_retries=2, wait=wait_fixed(3)),
    )
    def flaky(self: Any, payload: Account) -> int:
        attempts = record("started", self.request.id, payload.user_id)
        if attempts == 1:
            hold(payload.user_id, 30)
            raise ConnectionError("first attempt fails")
        return attempts

    @validated_task(
        app,
        shared=False,
        name="unique.redelivered",
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        unique=Unique(on=("user_id",), ttl=TTL, lease=LEASE),
    )
    def redelivered(self: Any, payload: Account) -> int:
        attempts = record("started", self.request.id, payload.user_id)
        if attempts == 1:
            time.sleep(60)  # the test kills this process
        return attempts

    @validated_task(
        app,
        shared=False,
        name="unique.revocable",
        bind=True,
        unique=Unique(on=("user_id",), ttl=TTL, lease=60),
    )
    def revocable(self: Any, payload: Hold) -> str:
        record("started", self.request.id, payload.user_id)
        hold(payload.user_id, payload.wait)
        return payload.user_id

    @validated_task(
        app,
        shared=False,
        name="unique.running",
        bind=True,
        unique=Unique(on=lambda p: p.user_id, ttl=TTL, lease=LEASE, mode="running"),
    )
    def running(self: Any, payload: Hold) -> str:
        record("started", self.request.id, payload.user_id)
        hold(payload.user_id, payload.wait)
        return payload.user_id

    @validated_task(
        app,
        shared=False,
        name="unique.running_skip",
        bind=True,
        unique=Unique(on=("user_id",), ttl=TTL, lease=LEASE, mode="running", on_duplicate="skip"),
    )
    def running_skip(self: Any, payload: Hold) -> str:
        record("started", self.request.id, payload.user_id)
        hold(payload.user_id, payload.wait)
        return payload.user_id

    def timed(self: Any, payload: Account) -> str:
        started = time.time()
        time.sleep(0.05)
        ended = time.time()
        state.rpush(f"{prefix}:timed:{payload.user_id}", f"{started} {ended}")
        return payload.user_id

    # A lease far above the run: no renewal adds a round trip to the counts.
    for mode in ("queued", "running"):
        validated_task(
            app,
            shared=False,
            name=f"unique.timed_{mode}",
            bind=True,
            unique=Unique(on=("user_id",), ttl=TTL, lease=60, mode=mode),
        )(timed)

    return app


def publish_burst(
    urls: tuple[str, str, str, str, str], user_id: str, threads: int, start_at: float
) -> list[str]:
    """From a process of its own: ``threads`` threads call ``delay()`` for one key at once.

    Returns one entry per call: the published task id, or ``"duplicate"``.
    """
    from concurrent.futures import ThreadPoolExecutor

    from celery_kit import DuplicateTaskError

    app = build_app(*urls)
    task = app.tasks["unique.hold"]

    def call(_: int) -> str:
        time.sleep(max(0.0, start_at - time.time()))
        try:
            return str(task.delay(user_id=user_id, wait=0.1).id)
        except DuplicateTaskError:
            return "duplicate"

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, range(threads)))


if os.environ.get("KIT_UNIQUE_PREFIX"):  # imported by the worker (-A): build from the environment
    app = build_app(
        os.environ["KIT_UNIQUE_BROKER_URL"],
        os.environ["KIT_UNIQUE_BACKEND_URL"],
        os.environ["KIT_UNIQUE_QUEUE"],
        os.environ["KIT_UNIQUE_LOCK_URL"],
        os.environ["KIT_UNIQUE_PREFIX"],
        int(os.environ["KIT_UNIQUE_METRICS_PORT"]),
    )
