"""Fixtures: real Redis (the test fails, never skips, when it is down), a real SMTP server,
a real alert receiver and a real prefork worker of this service.

The service is configured by environment variables only, like in production. This
process (the producer) and the worker subprocess share one environment, set before the
test modules import ``app``; every key the run creates in Redis -- broker queues, results,
delivery counters -- starts with a prefix unique to the run, so runs never collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery_kit.testing import AlertReceiver, WorkerProcess

from harness import EXAMPLE_DIR, Service, free_port
from smtp_receiver import SmtpReceiver

REDIS_URL = os.environ.get("CELERY_KIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
RUN_ID = uuid.uuid4().hex[:10]
#: Every Redis key of this run starts with it.
KEY_PREFIX = f"email-worker-test-{RUN_ID}"
STATE_DIR = Path(tempfile.mkdtemp(prefix=f"email-worker-test-{RUN_ID}-"))


#: The service's environment in the tests: the production settings, except for where
#: things are, short time limits and quick retries.
SERVICE_ENV = {
    "CELERY_KIT_BROKER_URL": REDIS_URL,
    "CELERY_KIT_RESULT_BACKEND": REDIS_URL,
    "CELERY_KIT_METRICS_HOST": "127.0.0.1",
    "CELERY_KIT_METRICS_PORT": str(free_port()),
    "CELERY_KIT_HEALTH_FILE": str(STATE_DIR / "worker-health.json"),
    "CELERY_KIT_HEALTH_BEAT_FILE": str(STATE_DIR / "beat-health.json"),
    "EMAIL_WORKER_STATE_URL": REDIS_URL,
    "EMAIL_WORKER_KEY_PREFIX": KEY_PREFIX,
    "EMAIL_WORKER_BROKER_KEY_PREFIX": f"{KEY_PREFIX}:",
    "EMAIL_WORKER_REPORTS_DIR": str(STATE_DIR / "reports"),
    "EMAIL_WORKER_REPORT_RECIPIENTS": "ops@example.com",
    "EMAIL_WORKER_EMAIL_SOFT_TIME_LIMIT": "3",
    "EMAIL_WORKER_EMAIL_TIME_LIMIT": "10",
    "EMAIL_WORKER_EMAIL_RETRY_BACKOFF": "0.2",
    "EMAIL_WORKER_EMAIL_RETRY_MAX_BACKOFF": "0.5",
    "SMTP_SENDER": "Email Worker <noreply@example.com>",
}


def pytest_configure(config: pytest.Config) -> None:
    # Before the test modules are imported: ``app`` reads its settings at import.
    os.environ.update(SERVICE_ENV)


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    """The Redis under test; the session FAILS with a clear message when it is unreachable."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}). These tests run a real worker "
            "against a real Redis: start one (redis-server) or point CELERY_KIT_TEST_REDIS_URL "
            "at one.",
            pytrace=False,
        )
    yield client
    for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def smtp() -> Iterator[SmtpReceiver]:
    server = SmtpReceiver()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _smtp_behaves_after_each_test(smtp: SmtpReceiver) -> Iterator[None]:
    """A test's misbehaviour (or a refusal it did not use up) never leaks into the next one."""
    yield
    smtp.behave()


@pytest.fixture(scope="session")
def alerts() -> Iterator[AlertReceiver]:
    """Receives the webhook alerts the worker sends (``CELERY_KIT_ALERT_SINKS``)."""
    receiver = AlertReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="session")
def service(redis_client: redis.Redis, smtp: SmtpReceiver, alerts: AlertReceiver) -> Iterator[Service]:
    """A real prefork worker of ``app.celery_app`` consuming the ``email`` and ``reports``
    queues, as the README starts it."""
    worker = WorkerProcess(
        "app.celery_app",
        queues=["email", "reports"],
        pool="prefork",
        concurrency=2,
        cwd=EXAMPLE_DIR,
        hostname=f"email-{RUN_ID}@%h",
        env={
            **SERVICE_ENV,
            "SMTP_HOST": smtp.host,
            "SMTP_PORT": str(smtp.port),
            "CELERY_KIT_ALERT_SINKS": alerts.url,
            "PYTHONPATH": str(EXAMPLE_DIR),
        },
    )
    worker.start(timeout=60)
    try:
        yield Service(
            worker,
            int(SERVICE_ENV["CELERY_KIT_METRICS_PORT"]),
            Path(SERVICE_ENV["CELERY_KIT_HEALTH_FILE"]),
            Path(SERVICE_ENV["EMAIL_WORKER_REPORTS_DIR"]),
        )
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def key_prefix() -> str:
    """The prefix of every Redis key this run creates (broker, results, delivery log)."""
    return KEY_PREFIX


@pytest.fixture(scope="session")
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_python(*args, env={...})``: ``python ARGS`` in the service's folder, with the
    service's environment (plus ``env``); returns the completed process."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=EXAMPLE_DIR,
            env={**os.environ, "PYTHONPATH": str(EXAMPLE_DIR), **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
