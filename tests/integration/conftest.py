"""A real prefork worker per broker (Redis and RabbitMQ), shared by the integration tests;
private brokers, health workers and the probe CLI for the health tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kit.testing import WorkerProcess

from .._brokers import PrivateRabbit, PrivateRedis, drop_queue
from ..conftest import RUN_ID
from .health_app import build_app as health_build_app
from .worker_app import build_app

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LiveWorker:
    """A running worker and a client app talking to it through the same broker."""

    app: Celery
    worker: WorkerProcess
    state: redis.Redis
    prefix: str

    def count(self, kind: str, key: str) -> int:
        return int(self.state.get(f"{self.prefix}:{kind}:{key}") or 0)

    def events(self, task_id: str) -> list[dict[str, Any]]:
        raw = self.state.lrange(f"{self.prefix}:events:{task_id}", 0, -1)
        return [json.loads(item) for item in raw]


@pytest.fixture(scope="session", params=["redis", "rabbitmq"])
def live_worker(request: pytest.FixtureRequest, redis_url: str) -> Iterator[LiveWorker]:
    broker = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    prefix = f"kit-{RUN_ID}-{request.param}"
    queue = f"{prefix}-tasks"
    app = build_app(broker, redis_url, queue, redis_url, prefix)
    worker = WorkerProcess(
        "tests.integration.worker_app",
        queues=[queue],
        pool="prefork",
        concurrency=2,
        cwd=ROOT,
        env={
            "KIT_TEST_BROKER_URL": broker,
            "KIT_TEST_BACKEND_URL": redis_url,
            "KIT_TEST_QUEUE": queue,
            "KIT_TEST_STATE_URL": redis_url,
            "KIT_TEST_PREFIX": prefix,
            "PYTHONPATH": str(ROOT),
        },
    )
    worker.start()
    state = redis.Redis.from_url(redis_url)
    try:
        yield LiveWorker(app, worker, state, prefix)
        worker.stop()
        # With acks_late, a message the worker never acknowledged is back in the queue
        # once the worker is gone: every message must have been settled exactly once.
        assert drop_queue(app, queue) == 0, "messages left unacknowledged in the queue"
    finally:
        worker.stop()
        for key in state.scan_iter(f"{prefix}:*"):
            state.delete(key)
        state.close()


# -- health probes: private brokers, workers writing state files, the probe CLI ----------------

SRC_PATH = f"{ROOT / 'src'}{os.pathsep}{ROOT}"


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not reached within {timeout}s")


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["redis", "rabbitmq"])
def private_broker(request: pytest.FixtureRequest) -> PrivateRedis | PrivateRabbit:
    """A broker of the test's own, Redis or RabbitMQ, that it may stop and start again."""
    broker: PrivateRedis | PrivateRabbit = request.getfixturevalue(
        "private_redis" if request.param == "redis" else "private_rabbit"
    )
    return broker


@dataclass
class HealthWorker:
    """A worker of ``tests.integration.health_app`` and the state file it writes."""

    app: Celery
    worker: WorkerProcess
    queue: str
    state_file: Path

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text()))


def start_health_worker(
    broker: str, queue: str, directory: Path, *, pool: str = "prefork", concurrency: int = 2
) -> HealthWorker:
    state_file = directory / f"{pool}-%n.json"
    worker = WorkerProcess(
        "tests.integration.health_app",
        queues=[queue],
        pool=pool,
        concurrency=concurrency,
        cwd=ROOT,
        env={
            "KIT_HEALTH_BROKER_URL": broker,
            "KIT_HEALTH_QUEUE": queue,
            "KIT_HEALTH_FILE": str(state_file),
            "PYTHONPATH": SRC_PATH,
        },
    )
    worker.start()
    node = worker.hostname.replace("%h", socket.gethostname())
    path = directory / f"{pool}-{node.split('@')[0]}.json"
    return HealthWorker(health_build_app(broker, queue), worker, queue, path)


def delete_queue(app: Celery, queue: str) -> None:
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)


@dataclass
class BusyFleet:
    """Workers whose every pool slot runs an ``acks_late`` task, with more tasks waiting.

    Each worker has reserved (prefetch = concurrency) and is running ``busy`` tasks it has
    not acknowledged; ``waiting`` more sit in ``queue``. The tasks end when ``gate`` exists.
    """

    broker: str
    url: str
    queue: str
    workers: list[HealthWorker]
    gate: Path
    busy: int
    waiting: int

    @property
    def app(self) -> Celery:
        return self.workers[0].app


def _busy_fleet(
    broker: str, url: str, directory: Path, *, size: int = 2, waiting: int = 2
) -> Iterator[BusyFleet]:
    queue = f"kit-{RUN_ID}-health-busy-{broker}"
    gate = directory / "release"
    concurrency = 2
    started: list[HealthWorker] = []
    try:
        with ThreadPoolExecutor(size) as pool:  # two cores: starting them side by side halves the wait
            futures = [
                pool.submit(start_health_worker, url, queue, directory, concurrency=concurrency)
                for _ in range(size)
            ]
            errors: list[Exception] = []
            for future in futures:
                try:
                    started.append(future.result())
                except Exception as exc:
                    errors.append(exc)
            if errors:
                raise errors[0]
        hold = started[0].app.tasks["health.hold"]
        for _ in range(size * concurrency + waiting):
            hold.delay(str(gate))
        wait_until(lambda: all(w.state().get("active") == concurrency for w in started), timeout=30)
        yield BusyFleet(broker, url, queue, started, gate, size * concurrency, waiting)
    finally:
        gate.touch()
        with ThreadPoolExecutor(max(len(started), 1)) as pool:
            list(pool.map(lambda hw: hw.worker.stop(), started))
        if started:
            delete_queue(started[0].app, queue)
        for hw in started:
            hw.worker.remove_log()


@pytest.fixture(scope="module")
def redis_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusyFleet]:
    """A busy fleet on a private Redis: its ``unacked`` hash and its control replies are the fleet's only."""
    server = PrivateRedis(tmp_path_factory.mktemp("fleet-redis"))
    server.start()
    try:
        yield from _busy_fleet("redis", server.url, tmp_path_factory.mktemp("fleet-redis-workers"))
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rabbit_fleet(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusyFleet]:
    """A busy fleet on the shared RabbitMQ: per-queue counts are exact on a queue of its own."""
    yield from _busy_fleet("rabbitmq", amqp_url, tmp_path_factory.mktemp("fleet-rabbit"))


def run_probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """``python -m celery_kit.health ARGS``: the exit code and the JSON line it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "celery_kit.health", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC_PATH, **(env or {})},
        timeout=120,
        check=False,
    )
    lines = done.stdout.splitlines()
    assert lines, f"no output from the probe; stderr: {done.stderr}"
    return done.returncode, dict(json.loads(lines[-1]))
