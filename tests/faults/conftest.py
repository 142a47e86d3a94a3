"""Fault injection against real prefork workers: ledgers, workers that can be killed, reports.

Every scenario counts, from the ledger ``tests.faults.fault_app`` keeps in Redis, how many
tasks the producer had acknowledged, how many completed, how many ran more than once and
how many were lost, and adds a row to ``docs/reliability.md``, which the suite rewrites at
the end of every run that executed a fault scenario.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import celery
import psutil
import pytest
import redis
from celery import Celery

from celery_kit.testing import WorkerProcess

from .._brokers import PrivateRedis, drop_queue
from .._support import wait_for
from ..conftest import RUN_ID
from .fault_app import build_app

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "docs" / "reliability.md"

#: ``make soak`` sets this: the same scenarios with many more tasks.
SOAK = os.environ.get("CELERY_KIT_SOAK") == "1"


def scale(ci: int, soak: int) -> int:
    """The task count of a scenario: bounded in CI, large under ``make soak``."""
    return soak if SOAK else ci


# -- the ledger --------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the fault app's tasks recorded in Redis under one prefix."""

    state: redis.Redis
    prefix: str

    def _hash(self, name: str) -> dict[str, int]:
        raw = self.state.hgetall(f"{self.prefix}:{name}")
        return {_text(key): int(value) for key, value in raw.items()}

    def started(self) -> dict[str, int]:
        return self._hash("started")

    def completed(self) -> dict[str, int]:
        return self._hash("completed")

    def completed_count(self) -> int:
        return int(self.state.hlen(f"{self.prefix}:completed"))

    def running(self) -> dict[str, tuple[int, float]]:
        """Task id -> (pid of the pool process executing it, when it started)."""
        raw = self.state.hgetall(f"{self.prefix}:running")
        entries = (_text(value).split() for value in raw.values())
        return {_text(key): (int(pid), float(stamp)) for key, (pid, stamp) in zip(raw, entries, strict=True)}

    def wait_completed(self, ids: Iterable[str], timeout: float) -> None:
        wanted = set(ids)
        try:
            wait_for(lambda: wanted <= set(self.completed()), timeout=timeout)
        except AssertionError:
            missing = wanted - set(self.completed())
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} tasks not completed within {timeout}s "
                f"(e.g. {sorted(missing)[:5]})"
            ) from None

    def clear(self) -> None:
        for key in self.state.scan_iter(f"{self.prefix}:*"):
            self.state.delete(key)


@dataclass
class Outcome:
    """The counted result of one scenario: a row of ``docs/reliability.md``."""

    scenario: str
    broker: str
    sent: int
    completed: int
    executions: int
    duplicated: int
    lost: int
    faults: str
    seconds: float
    notes: str = ""


def count(ledger: Ledger, sent_ids: Iterable[str]) -> tuple[int, int, int, set[str]]:
    """``(completed, executions, lost, ids_run_twice)`` for the acknowledged ``sent_ids``."""
    sent = set(sent_ids)
    completed = ledger.completed()
    started = ledger.started()
    done = sent & set(completed)
    twice = {task_id for task_id in sent if started.get(task_id, 0) > 1 or completed.get(task_id, 0) > 1}
    return len(done), sum(started.get(task_id, 0) for task_id in sent), len(sent - done), twice


def record(
    report: Report,
    rig: FaultRig,
    scenario: str,
    ids: Iterable[str],
    faults: str,
    start: float,
    notes: str = "",
) -> tuple[int, int, int, set[str]]:
    """Count ``ids`` in ``rig``'s ledger, add the row to ``report``; return :func:`count`'s tuple."""
    sent = list(ids)
    done, executions, lost, twice = count(rig.ledger, sent)
    report.add(
        Outcome(
            scenario, rig.broker, len(sent), done, executions, len(twice), lost, faults, elapsed(start), notes
        )
    )
    return done, executions, lost, twice


# -- report ------------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.rows.append(outcome)

    def render(self, keep: str = "") -> str:
        """The report; rows and notes of ``keep`` (the last report) stay for scenarios not run now."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        machine = (
            f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        )
        lines = [
            "# Reliability report",
            "",
            "<!-- Written by the fault suite (tests/faults, run by `make test`; `make soak` for the",
            "     large variants). Do not edit by hand: the next run rewrites it. -->",
            "",
            f"Measured {stamp} on {machine}, Celery {celery.__version__}"
            f"{', soak sizes' if SOAK else ', CI sizes'}. Every worker is a real prefork worker",
            "(`tests/faults/fault_app.py`, `presets.reliable`); every fault hits a real process or",
            "a private broker the test started. *Sent* counts the tasks the producer saw",
            "acknowledged (publisher confirms on RabbitMQ); *lost* are those never completed;",
            "*duplicated* are those that started more than once -- allowed only for tasks that",
            "were in flight when the fault hit, which each test asserts.",
            "",
            "What holds, and what the suite asserts: on RabbitMQ (quorum queues, publisher",
            "confirms) no acknowledged task is lost in any scenario. On Redis, kombu's transport",
            "takes a message with BRPOP and records it as unacknowledged in a second command: a",
            "message popped in between is lost if the worker's main process is killed (or the",
            "server dies) at that instant -- at most one per kill or outage, never a task that",
            "had started. The suite allows exactly that on Redis and nothing on RabbitMQ; use",
            "RabbitMQ with quorum queues where no task may ever be lost. No message, however",
            "malformed, crashes a worker (`tests/faults/test_hostile_input.py`).",
            "",
            "| scenario | broker | sent | completed | executions | duplicated | lost "
            "| faults injected | seconds |",
            "|---|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        table = {
            _cells(line)[:2]: line
            for line in keep.splitlines()
            if line.startswith("| ") and "---" not in line
        }
        table.pop(("scenario", "broker"), None)
        notes = {line.split("**: ")[0]: line for line in keep.splitlines() if line.startswith("- **")}
        for row in self.rows:
            table[(row.scenario, row.broker)] = (
                f"| {row.scenario} | {row.broker} | {row.sent} | {row.completed} | {row.executions} "
                f"| {row.duplicated} | {row.lost} | {row.faults} | {row.seconds:.1f} |"
            )
            key = f"- **{row.scenario} ({row.broker})"
            notes.pop(key, None)
            if row.notes:
                notes[key] = f"{key}**: {row.notes}"
        lines += [table[key] for key in sorted(table)]
        if notes:
            lines += ["", "## Notes", "", *(notes[key] for key in sorted(notes))]
        return "\n".join(lines) + "\n"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _cells(line: str) -> tuple[str, ...]:
    return tuple(cell.strip() for cell in line.strip().strip("|").split("|"))


@pytest.fixture(scope="session")
def reliability_report() -> Iterator[Report]:
    report = Report()
    yield report
    if report.rows:
        REPORT.write_text(report.render(keep=REPORT.read_text() if REPORT.exists() else ""))


# -- workers -----------------------------------------------------------------------------------


class FaultWorker(WorkerProcess):
    """A worker of ``tests.faults.fault_app`` that a test may SIGKILL whole, children too."""

    def pool_pids(self) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(self.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def kill_all(self) -> None:
        """SIGKILL the main process and every pool process: a node that vanished."""
        try:
            family = [psutil.Process(self.pid), *psutil.Process(self.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=10)

    def stop(self, timeout: float = 20.0) -> int | None:
        orphans = self.pool_pids()
        code = super().stop(timeout)
        for pid in orphans:  # a worker killed mid-shutdown must not leave pool processes behind
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        return code


@dataclass
class FaultRig:
    """A broker, a queue, a ledger and a way to start fault-app workers against them."""

    broker: str
    broker_url: str
    state_url: str
    queue: str
    prefix: str
    ledger: Ledger
    workers: list[FaultWorker] = field(default_factory=list)

    def app(self, **options: object) -> Celery:
        return build_app(self.broker_url, self.queue, self.state_url, self.prefix, **options)  # type: ignore[arg-type]

    def worker(self, *, concurrency: int = 2, env: dict[str, str] | None = None) -> FaultWorker:
        worker = FaultWorker(
            "tests.faults.fault_app",
            queues=[self.queue],
            pool="prefork",
            concurrency=concurrency,
            cwd=ROOT,
            env={
                "KIT_FAULT_BROKER_URL": self.broker_url,
                "KIT_FAULT_QUEUE": self.queue,
                "KIT_FAULT_STATE_URL": self.state_url,
                "KIT_FAULT_PREFIX": self.prefix,
                "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
                **(env or {}),
            },
        )
        self.workers.append(worker)
        worker.start(timeout=90)
        return worker

    def wait_completed(self, ids: Iterable[str], timeout: float) -> None:
        """Wait for ``ids`` to complete; on failure, say what the queue and the worker show."""
        try:
            self.ledger.wait_completed(ids, timeout)
        except AssertionError as exc:
            log = self.workers[-1].log()[-4000:] if self.workers else "(no worker)"
            raise AssertionError(
                f"{exc}\nqueue depth: {self.queue_depth()}\nlast worker log:\n{log}"
            ) from None

    def queue_depth(self) -> int | str:
        app = Celery(set_as_current=False, broker=self.broker_url)
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                return int(conn.default_channel.queue_declare(self.queue, passive=True).message_count)
        except Exception as exc:
            return f"unknown ({exc!r})"
        finally:
            app.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
            worker.remove_log()
        self.ledger.clear()
        app = Celery(set_as_current=False, broker=self.broker_url)
        app.conf.broker_connection_timeout = 3
        try:  # quorum queues outlive their consumers: leave nothing on the shared broker
            drop_queue(app, self.queue)
        except Exception:  # a private broker the test has already stopped
            pass
        finally:
            app.close()


@pytest.fixture
def rig_factory(redis_url: str, redis_client: redis.Redis) -> Iterator[Callable[[str, str], FaultRig]]:
    """``rig_factory(broker_name, broker_url)``: a rig with its own queue and ledger prefix."""
    rigs: list[FaultRig] = []

    def make(broker: str, broker_url: str) -> FaultRig:
        prefix = f"faults-{RUN_ID}-{uuid.uuid4().hex[:6]}"
        rig = FaultRig(broker, broker_url, redis_url, f"{prefix}-q", prefix, Ledger(redis_client, prefix))
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def rig(
    request: pytest.FixtureRequest, redis_url: str, rig_factory: Callable[[str, str], FaultRig]
) -> FaultRig:
    """A rig on the shared Redis or RabbitMQ (faults hit the workers, not the broker)."""
    url = redis_url if request.param == "redis" else request.getfixturevalue("amqp_url")
    return rig_factory(request.param, url)


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private Redis with an fsync-always AOF: a test may shut it down and start it again."""
    server = PrivateRedis(tmp_path, persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def elapsed(start: float) -> float:
    return time.monotonic() - start
