"""Shared fixtures: real brokers (fail, never skip, when one is down) and unique names."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import structlog
from celery import Celery
from kombu.message import Message

from celery_kit.logging import configure_logging

from ._brokers import PrivateRabbit

#: The kit's own pytest plugin (real-worker fixtures), dogfooded by these tests.
pytest_plugins = ["celery_kit.testing", "pytester"]

REDIS_URL = os.environ.get("CELERY_KIT_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("CELERY_KIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

#: One id per test session: every queue and key a run creates carries it.
RUN_ID = uuid.uuid4().hex[:10]


def _require(url: str, what: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (6379 if parts.scheme.startswith("redis") else 5672)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        pytest.fail(
            f"{what} is not reachable at {host}:{port} ({exc}). Integration tests need a real "
            f"broker: start it (see .ci/run) or point the URL variable at one.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require(REDIS_URL, "Redis")
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    _require(AMQP_URL, "RabbitMQ")
    return AMQP_URL


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(f"*{RUN_ID}*"):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbit]:
    """A private RabbitMQ node (5-10 s to start) shared by a module; a test may stop and start it."""
    node = PrivateRabbit(tmp_path_factory.mktemp("rabbit"))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' own checker (``promtool``), which the rule and scrape tests run."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: the Prometheus rule tests and scrape checks need it. "
            "Install Debian's `prometheus` package (`apt-get install prometheus`; .ci/run does) "
            "or put a Prometheus release's promtool on PATH.",
            pytrace=False,
        )
    return path


@pytest.fixture
def unique() -> str:
    """A name no other test, run or machine-mate uses."""
    return f"{RUN_ID}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app(unique: str) -> Iterator[Celery]:
    """An app on kombu's in-memory broker: real publishing, no server, a queue per test."""
    app = Celery(f"unit-{unique}", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(
        task_default_queue=f"q-{unique}",
        task_soft_time_limit=5,
        task_time_limit=10,
        broker_connection_retry_on_startup=False,
    )
    yield app
    app.close()


def decoded(message: Message) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """A task message's body: ``(args, kwargs, embed)`` (Celery protocol 2)."""
    args, kwargs, embed = message.decode()  # type: ignore[no-untyped-call]
    return args, kwargs, embed


def published(app: Celery) -> list[Message]:
    """Drain and return the messages waiting in ``app``'s default queue."""
    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(app.conf.task_default_queue, no_ack=True)
        while True:
            try:
                messages.append(queue.get(block=False))
            except queue.Empty:
                break
        queue.close()
    return messages


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The kit's JSON logging, into a string; the handler and structlog reset afterwards."""
    out = io.StringIO()
    configure_logging(json=True, level="INFO", stream=out)
    yield out
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_celery_kit_handler", False)]:
        root.removeHandler(handler)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
