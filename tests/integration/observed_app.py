"""An instrumented app (logging + metrics) for the observability integration tests."""

from __future__ import annotations

import os
import time
import warnings

import redis
import structlog
from celery import Celery
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from pydantic import BaseModel, SecretStr

from celery_kit import PermanentError, RetryPolicy, instrument, validated_task


class Credentials(BaseModel):
    user: str
    password: SecretStr


def build_app(broker_url: str, queue: str, metrics_port: int, state_url: str, prefix: str) -> Celery:
    app = Celery(f"kit_observed_{prefix}", broker=broker_url, backend=state_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_soft_time_limit=20,
        task_time_limit=30,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=5,
        broker_connection_retry_on_startup=True,
        result_expires=600,
    )
    instrument(app, json_logs=True, metrics_port=metrics_port)
    state = redis.Redis.from_url(state_url)
    log = structlog.get_logger("observed")

    task_logger = get_task_logger("observed.tasks")

    @validated_task(app, shared=False, name="obs.ok")
    def ok(n: int) -> int:
        log.info("inside task", n=n)
        task_logger.info("task logger line %s", n)
        return n

    @validated_task(app, shared=False, name="obs.victim")
    def victim(marker: str) -> None:
        state.set(marker, os.getpid())
        time.sleep(30)

    @validated_task(app, shared=False, name="obs.fail")
    def fail(n: int) -> None:
        raise PermanentError(f"gone {n}")

    @validated_task(
        app,
        shared=False,
        name="obs.flaky",
        retry=RetryPolicy(retry_on=ConnectionError, max_retries=3, backoff=0.01, jitter=False),
    )
    def flaky(marker: str) -> str:
        # Fails on its first attempt only (retries=0), whatever process runs it.
        if flaky.request.retries == 0:
            raise ConnectionError("first attempt fails")
        return marker

    @validated_task(app, shared=False, name="obs.login", log_payload=True)
    def login(creds: Credentials) -> str:
        log.info("logging in", user=creds.user)
        return creds.user

    @validated_task(app, shared=False, name="obs.stubborn", soft_time_limit=0.5, time_limit=1.5)
    def stubborn() -> None:
        # Ignores its soft limit, so the hard limit kills the pool process.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except SoftTimeLimitExceeded:
                continue

    @validated_task(app, shared=False, name="obs.tagged")
    def tagged(tag: str) -> str:
        time.sleep(0.02)
        log.info("tagged line", tag=tag)
        return tag

    @validated_task(app, shared=False, name="obs.ctx")
    def ctx(tag: str, fail: bool = False) -> str:
        # Binds a key no other task binds: if the context leaked, the next task in this
        # process (or thread) would log it. ``tag`` and ``pid`` are passed explicitly, so
        # a line says which task wrote it whatever the context holds.
        log.info("ctx line", tag=tag, pid=os.getpid())
        structlog.contextvars.bind_contextvars(**{f"bound_{tag}": tag})
        task_logger.info("ctx task logger %s", tag)
        time.sleep(0.01)
        log.info("ctx line", tag=tag, pid=os.getpid())
        if fail:
            raise PermanentError(f"ctx {tag}")
        return tag

    @validated_task(app, shared=False, name="obs.reject")
    def reject() -> None:
        raise Reject("not for this worker", requeue=False)

    @validated_task(app, shared=False, name="obs.noisy")
    def noisy(tag: str) -> str:
        warnings.warn(f"noisy warning {tag}", UserWarning, stacklevel=1)
        print(f"noisy print {tag}")
        return tag

    @validated_task(app, shared=False, name="obs.sleeper")
    def sleeper(marker: str) -> None:
        state.set(marker, os.getpid())
        time.sleep(30)

    return app


if "KIT_OBS_BROKER_URL" in os.environ:  # imported by a worker process
    app = build_app(
        os.environ["KIT_OBS_BROKER_URL"],
        os.environ["KIT_OBS_QUEUE"],
        int(os.environ["KIT_OBS_METRICS_PORT"]),
        os.environ["KIT_OBS_STATE_URL"],
        os.environ["KIT_OBS_PREFIX"],
    )
