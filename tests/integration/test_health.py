"""Health probes against real workers, a real beat and real brokers -- nothing mocked.

Every failure the probes exist for is produced for real: a stopped broker (a private
``redis-server`` or RabbitMQ node of the test), a frozen worker main process and frozen
pool children (SIGSTOP), a solo task past its time limit, a frozen beat. Queue depths and
``health_check`` are measured against workers really holding unacknowledged tasks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_kit.health import health_check

from .._brokers import PrivateRabbit, PrivateRedis
from .._support import free_port
from ..conftest import RUN_ID
from .conftest import (
    ROOT,
    SRC_PATH,
    BusyFleet,
    HealthWorker,
    delete_queue,
    run_probe,
    start_health_worker,
    wait_until,
)

pytestmark = pytest.mark.integration


def probe_code(*args: str) -> int:
    return run_probe(*args)[0]


def becomes(code: int, *args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the probe until it exits with ``code``; return that answer."""
    seen: list[dict[str, Any]] = []

    def check() -> bool:
        got, answer = run_probe(*args)
        seen.append(answer)
        return got == code

    try:
        wait_until(check, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"probe {args} never exited {code}; last answer: {seen[-1:]}") from None
    return seen[-1]


@pytest.fixture(scope="module")
def redis_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthWorker]:
    queue = f"kit-{RUN_ID}-health-redis"
    hw = start_health_worker(redis_url, queue, tmp_path_factory.mktemp("health-redis"))
    try:
        yield hw
    finally:
        hw.worker.stop()
        delete_queue(hw.app, queue)


def worker_probe(hw: HealthWorker, probe: str, *flags: str) -> tuple[int, dict[str, Any]]:
    return run_probe("worker", probe, "--file", str(hw.state_file), *flags)


# -- baseline -----------------------------------------------------------------------------------


def test_baseline_on_redis_all_probes_pass_and_check_sees_the_queue(redis_worker: HealthWorker) -> None:
    hw = redis_worker
    for probe in ("live", "ready", "startup"):
        becomes(0, "worker", probe, "--file", str(hw.state_file))
    state = hw.state()
    assert state["pid"] == hw.worker.pid
    assert state["pool"] == "prefork"
    assert state["concurrency"] == 2
    assert len(state["children"]) == 2
    assert state["phase"] == "consuming"

    env = {"KIT_HEALTH_BROKER_URL": str(hw.app.conf.broker_url), "KIT_HEALTH_QUEUE": hw.queue}
    code, report = run_probe("check", "-A", "tests.integration.health_app", "--timeout", "10", env=env)
    assert code == 0, report
    assert report["broker"]["transport"] == "redis"
    assert report["queues"][hw.queue]["messages"] == 0
    assert report["queues"][hw.queue]["consumers"] is None  # Redis keeps no consumer registry
    assert isinstance(report["broker"]["unacked"], int)

    node = hw.worker.hostname.replace("%h", os.uname().nodename)
    seen = health_check(hw.app, timeout=2.0)
    assert node in seen["nodes"]
    assert seen["workers"] >= 1
    assert seen["nodes"][node] == 0


def test_baseline_on_rabbitmq_and_a_stopped_worker_is_not_alive(amqp_url: str, tmp_path: Path) -> None:
    queue = f"kit-{RUN_ID}-health-amqp"
    hw = start_health_worker(amqp_url, queue, tmp_path)
    try:
        for probe in ("live", "ready", "startup"):
            becomes(0, "worker", probe, "--file", str(hw.state_file))
        env = {"KIT_HEALTH_BROKER_URL": amqp_url, "KIT_HEALTH_QUEUE": queue}
        code, report = run_probe("check", "-A", "tests.integration.health_app", "-Q", queue, env=env)
        assert code == 0, report
        assert report["queues"][queue] == {"messages": 0, "consumers": 1}
        hw.worker.stop()
        assert hw.state()["phase"] == "stopping"  # warm shutdown, told apart from a reconnect
        code, answer = worker_probe(hw, "live")
        assert code == 1, answer
        assert "gone" in answer["reason"]
    finally:
        hw.worker.stop()
        delete_queue(hw.app, queue)


def test_check_reports_a_dead_broker_as_dependency_down() -> None:
    port = free_port()  # nobody listens on it
    env = {"KIT_HEALTH_BROKER_URL": f"redis://127.0.0.1:{port}/0", "KIT_HEALTH_QUEUE": "unused"}
    code, report = run_probe("check", "-A", "tests.integration.health_app", "--timeout", "2", env=env)
    assert code == 5, report
    assert report["broker"]["ok"] is False
    assert "broker unreachable" in report["reason"]


# -- broker outage --------------------------------------------------------------------------------


def test_broker_outage_fails_ready_at_once_keeps_live_and_both_recover(
    private_broker: PrivateRedis | PrivateRabbit, tmp_path: Path
) -> None:
    queue = f"kit-{RUN_ID}-health-outage"
    hw = start_health_worker(private_broker.url, queue, tmp_path, concurrency=1)
    try:
        for probe in ("live", "ready", "startup"):
            becomes(0, "worker", probe, "--file", str(hw.state_file))
        private_broker.stop()
        answer = becomes(5, "worker", "ready", "--file", str(hw.state_file), timeout=15)
        assert answer["phase"] == "reconnecting"
        # The beat stops during the outage: live must not care, within the reconnect grace...
        wait_until(lambda: time.monotonic() - hw.state()["mono"] > 1.5)  # same clock as the worker
        for _ in range(3):
            code, answer = worker_probe(hw, "live", "--max-age", "1")
            assert code == 0, answer
            assert "reconnecting" in answer["reason"]
        # ...and fails with "dependency down" once past it.
        code, answer = worker_probe(hw, "live", "--reconnect-grace", "0")
        assert code == 5, answer
        assert probe_code("worker", "startup", "--file", str(hw.state_file)) == 0

        private_broker.start()
        becomes(0, "worker", "ready", "--file", str(hw.state_file), timeout=60)
        assert probe_code("worker", "live", "--file", str(hw.state_file), "--max-age", "5") == 0
        state = hw.state()
        assert state["restarts"] == 1
        assert state["phase"] == "consuming"
    finally:
        hw.worker.stop()


# -- frozen processes -----------------------------------------------------------------------------


def test_a_frozen_worker_main_process_fails_live_with_loop_stale(redis_worker: HealthWorker) -> None:
    hw = redis_worker
    file = ("--file", str(hw.state_file))
    becomes(0, "worker", "live", *file, "--max-age", "2")
    os.kill(hw.worker.pid, signal.SIGSTOP)
    try:
        answer = becomes(2, "worker", "live", *file, "--max-age", "2", timeout=20)
        assert "event loop silent" in answer["reason"]
        assert probe_code("worker", "ready", *file, "--max-age", "2") == 2
    finally:
        os.kill(hw.worker.pid, signal.SIGCONT)
    becomes(0, "worker", "live", *file, "--max-age", "2")


def test_frozen_pool_children_with_queued_tasks_fail_live_with_pool_stalled(
    redis_worker: HealthWorker,
) -> None:
    hw = redis_worker
    file = ("--file", str(hw.state_file))
    becomes(0, "worker", "live", *file)
    children = hw.state()["children"]
    assert len(children) == 2
    accepted_before = hw.state()["accepted_total"]
    for pid in children:
        os.kill(pid, signal.SIGSTOP)
    try:
        results = [hw.app.tasks["health.sleep"].delay(0.01) for _ in range(4)]
        assert results
        answer = becomes(3, "worker", "live", *file, "--stall-after", "2", timeout=30)
        assert "waiting" in answer["reason"]
        # With the default stall_after the same state is still within bounds.
        assert probe_code("worker", "live", *file) == 0
    finally:
        for pid in children:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: hw.state()["accepted_total"] >= accepted_before + 4, timeout=30)
    becomes(0, "worker", "live", *file, "--stall-after", "2")


# -- solo pool --------------------------------------------------------------------------------------


def test_solo_task_is_busy_within_its_limit_and_fails_live_past_it(redis_url: str, tmp_path: Path) -> None:
    queue = f"kit-{RUN_ID}-health-solo"
    hw = start_health_worker(redis_url, queue, tmp_path, pool="solo", concurrency=1)
    file = ("--file", str(hw.state_file))
    gate = tmp_path / "limited.gate"
    try:
        becomes(0, "worker", "ready", *file)
        # time_limit=4, which solo cannot enforce; the task runs until the gate exists, so
        # a slow machine cannot end it before the test has seen each state.
        hw.app.tasks["health.limited"].delay(str(gate))
        wait_until(lambda: bool(hw.state()["executing"]), timeout=20)
        executing = hw.state()["executing"]
        assert executing["task"] == "health.limited"
        assert executing["time_limit"] == 4
        # The loop is blocked by the task, past --max-age: busy, not dead (within 4 + 1 s).
        wait_until(
            lambda: run_probe("worker", "live", *file, "--max-age", "0.5")[1]["reason"].startswith("busy")
        )
        code, answer = worker_probe(hw, "live", "--max-age", "0.5", "--limit-slack", "1")
        if code != 3:  # still within 4 + 1 s of the start
            assert code == 0, answer
        answer = becomes(3, "worker", "live", *file, "--max-age", "0.5", "--limit-slack", "1", timeout=20)
        assert "past its time limit of 4s" in answer["reason"]
        # The task ends; the loop beats again.
        gate.touch()
        becomes(0, "worker", "live", *file, "--max-age", "2", "--limit-slack", "1", timeout=30)
        assert hw.state()["executing"] is None
    finally:
        gate.touch()  # a failed assertion must not leave the worker blocked in the task
        hw.worker.stop()
        delete_queue(hw.app, queue)


# -- beat ---------------------------------------------------------------------------------------------


class Beat:
    def __init__(self, broker: str, queue: str, directory: Path, gate: Path | None = None) -> None:
        self.state_file = directory / "beat.json"
        env = {
            **os.environ,
            "KIT_HEALTH_BROKER_URL": broker,
            "KIT_HEALTH_QUEUE": queue,
            "KIT_HEALTH_BEAT_FILE": str(self.state_file),
            "PYTHONPATH": SRC_PATH,
        }
        if gate is not None:
            env["KIT_HEALTH_BEAT_GATE"] = str(gate)
        command = [sys.executable, "-m", "celery", "-A", "tests.integration.health_app", "beat"]
        command += ["--max-interval", "1", "-s", str(directory / "schedule"), "-l", "INFO"]
        self.log = directory / "beat.log"
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def beat_queue(redis_url: str) -> Iterator[str]:
    queue = f"kit-{RUN_ID}-health-beat-{os.urandom(3).hex()}"
    yield queue
    client = redis.Redis.from_url(redis_url)
    client.delete(queue)
    client.close()


def test_a_frozen_beat_fails_live(redis_url: str, beat_queue: str, tmp_path: Path) -> None:
    beat = Beat(redis_url, beat_queue, tmp_path)
    file = ("--file", str(beat.state_file))
    try:
        for probe in ("live", "ready", "startup"):
            becomes(0, "beat", probe, *file, "--max-age", "3")
        state = json.loads(beat.state_file.read_text())
        assert state["max_interval"] == 1
        assert state["phase"] == "running"
        assert state["pid"] == beat.process.pid
        # Defaults: max(2 x 1 s, 60 s) + 10 s -- small test values are flags.
        assert probe_code("beat", "live", *file, "--beat-floor", "1", "--beat-grace", "1") == 0
        os.kill(beat.process.pid, signal.SIGSTOP)
        answer = becomes(2, "beat", "live", *file, "--beat-floor", "1", "--beat-grace", "1", timeout=20)
        assert "has not ticked" in answer["reason"]
        os.kill(beat.process.pid, signal.SIGCONT)
        becomes(0, "beat", "live", *file, "--max-age", "3")
    finally:
        beat.stop()
    assert probe_code("beat", "live", *file) == 1


def test_a_standby_beat_is_live_but_not_ready_until_it_takes_over(
    redis_url: str, beat_queue: str, tmp_path: Path
) -> None:
    gate = tmp_path / "lock-acquired"
    beat = Beat(redis_url, beat_queue, tmp_path, gate=gate)
    file = ("--file", str(beat.state_file))
    try:
        answer = becomes(4, "beat", "ready", *file, "--max-age", "3")
        assert answer["phase"] == "standby"
        assert probe_code("beat", "live", *file, "--max-age", "3") == 0
        assert probe_code("beat", "startup", *file, "--max-age", "3") == 0
        os.kill(beat.process.pid, signal.SIGSTOP)  # a frozen standby still goes stale
        becomes(2, "beat", "live", *file, "--max-age", "2", timeout=20)
        os.kill(beat.process.pid, signal.SIGCONT)
        becomes(0, "beat", "live", *file, "--max-age", "2")
        gate.touch()  # the "lock" is acquired: the scheduler starts ticking
        becomes(0, "beat", "ready", *file, "--max-age", "3")
        assert json.loads(beat.state_file.read_text())["phase"] == "running"
    finally:
        beat.stop()


# -- HTTP ---------------------------------------------------------------------------------------------


def test_serve_answers_the_probes_over_http(redis_worker: HealthWorker, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "celery_kit.health", "serve", "worker", "--port", "0"]
    command += ["--file", str(redis_worker.state_file)]
    env = {**os.environ, "PYTHONPATH": SRC_PATH}
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        first = json.loads(server.stderr.readline())
        base = first["serving"]
        assert base.startswith("http://127.0.0.1:")

        def get(path: str) -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(base + path, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        for path in ("/livez", "/readyz", "/startupz"):
            status, body = get(path)
            assert status == 200, body
            assert body["code"] == 0
        status, body = get("/status")
        assert status == 200
        assert body["state"]["pid"] == redis_worker.worker.pid
        assert body["live"]["ok"] is True
        assert get("/metrics")[0] == 404
    finally:
        server.terminate()
        server.wait(10)

    missing = subprocess.Popen(
        [sys.executable, "-m", "celery_kit.health", "serve", "--port", "0", "--file", str(tmp_path / "none")],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert missing.stderr is not None
        base = json.loads(missing.stderr.readline())["serving"]
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(base + "/livez", timeout=10)
        assert caught.value.code == 503
        assert json.loads(caught.value.read())["code"] == 1
    finally:
        missing.terminate()
        missing.wait(10)


# -- queue depth and health_check on busy workers ------------------------------------------------
# Last in the module: the busy fleets are module-scoped and live until the module ends.


def check_until(expected: dict[str, Any], env: dict[str, str], *queues: str) -> dict[str, Any]:
    """Run ``check -Q QUEUES`` until its queue counts are ``expected`` (a publish may still be
    in flight), for 15 s at most; return the last report, which the caller asserts on."""
    reports: list[dict[str, Any]] = []

    def matches() -> bool:
        code, report = run_probe(
            "check", "-A", "tests.integration.health_app", "-Q", ",".join(queues), env=env
        )
        reports.append({**report, "exit": code})
        return code == 0 and bool(report.get("queues") == expected)

    with contextlib.suppress(AssertionError):  # the caller's assertions say what differs
        wait_until(matches, timeout=15, interval=0.2)
    return reports[-1]


@pytest.mark.parametrize("fleet_fixture", ["redis_fleet", "rabbit_fleet"])
def test_check_counts_waiting_priority_and_unacknowledged_messages(
    fleet_fixture: str, request: pytest.FixtureRequest
) -> None:
    fleet: BusyFleet = request.getfixturevalue(fleet_fixture)
    idle = f"{fleet.queue}-idle"  # no worker consumes it
    noop = fleet.app.tasks["health.noop"]
    env = {"KIT_HEALTH_BROKER_URL": fleet.url, "KIT_HEALTH_QUEUE": fleet.queue}
    redis_broker = fleet.broker == "redis"
    try:
        for priority in (None, None, None, 5, 5, 9):
            noop.apply_async(queue=idle, priority=priority)
        if redis_broker:
            # The messages really sit in three lists: the queue and two priority sub-queues
            # (kombu's default steps 0/3/6/9, named queue + "\x06\x16" + step).
            client = redis.Redis.from_url(fleet.url)
            try:
                lists = {
                    step: client.llen(f"{idle}\x06\x16{step}" if step else idle) for step in (0, 3, 6, 9)
                }
            finally:
                client.close()
            assert lists == {0: 3, 3: 2, 6: 0, 9: 1}
        expected = {  # Redis keeps no consumer registry: consumers None
            idle: {"messages": 6, "consumers": None if redis_broker else 0},
            fleet.queue: {
                "messages": fleet.waiting,
                "consumers": None if redis_broker else len(fleet.workers),
            },
        }
        report = check_until(expected, env, idle, fleet.queue)
        assert report["exit"] == 0, report
        assert report["queues"] == expected, report
        assert report["broker"]["transport"] == fleet.broker.replace("rabbitmq", "amqp")
        if redis_broker:
            # Reserved by the workers, not yet acknowledged: in the transport's unacked hash.
            assert report["broker"]["unacked"] == fleet.busy, report
        assert [w.state()["active"] for w in fleet.workers] == [2, 2]  # nothing moved meanwhile
    finally:
        delete_queue(fleet.app, idle)


def test_health_check_counts_active_tasks_and_stops_waiting_at_limit(redis_fleet: BusyFleet) -> None:
    fleet = redis_fleet
    nodes = {str(w.state()["node"]) for w in fleet.workers}
    assert len(nodes) == 2
    everyone = {"workers": 2, "active_tasks": fleet.busy, "nodes": dict.fromkeys(nodes, 2)}

    started = time.monotonic()
    assert health_check(fleet.app, timeout=10, limit=2) == everyone
    assert time.monotonic() - started < 5  # returned on the second reply, not at the timeout

    first = health_check(fleet.app, timeout=10, limit=1)
    assert first["workers"] == 1, first
    assert set(first["nodes"]) <= nodes
    assert first["active_tasks"] == 2

    started = time.monotonic()  # without a limit it waits out the timeout for late replies
    assert health_check(fleet.app, timeout=1.5) == everyone
    assert time.monotonic() - started >= 1.5
