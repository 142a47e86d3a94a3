"""The broker restarts under load: the worker reconnects, consumes again, and nothing the
producer saw acknowledged is lost.

Each test starts its own broker (never the machine's shared one): a Redis with an
fsync-always append-only file, shut down with ``SHUTDOWN NOSAVE``; a RabbitMQ node whose
quorum queue and persistent messages survive a full stop and start. The producer keeps
publishing through the outage with Celery's publish retry; a task counts as *sent* only
once ``apply_async`` returned (on RabbitMQ, after the publisher confirm).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from .._brokers import PrivateRabbit, PrivateRedis
from .._support import wait_for
from .conftest import FaultRig, Report, record, scale

pytestmark = pytest.mark.integration

#: Publish retries that outlast a broker restart (about a minute), as a producer that must
#: not drop work would configure them.
PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5}


#: Why the Redis test tolerates one lost task per outage (measured: 1 of 2,000 lost in 2 of
#: 12 Redis restart runs, the one traced never received by the worker; RabbitMQ: 0, asserted).
REDIS_POP_WINDOW = (
    "kombu's Redis transport takes a message with BRPOP and records it as unacknowledged "
    "in a second command, so a message popped in the instant the server dies is gone: at "
    "most one per outage, a limit of Redis as a broker that RabbitMQ does not have"
)


class Producer(threading.Thread):
    """Publishes ``total`` tasks at a steady pace and records those the broker accepted."""

    def __init__(self, task: Any, total: int, pace: float) -> None:
        super().__init__(daemon=True)
        self.task, self.total, self.pace = task, total, pace
        self.sent: list[str] = []
        self.failed: list[BaseException] = []

    def run(self) -> None:
        for i in range(self.total):
            try:
                result = self.task.apply_async(
                    kwargs={"n": i}, retry=True, retry_policy=PUBLISH_RETRY, ignore_result=True
                )
            except Exception as exc:  # not acknowledged: not counted as sent
                self.failed.append(exc)
            else:
                self.sent.append(result.id)
            time.sleep(self.pace)


def _restart_under_load(
    rig: FaultRig,
    report: Report,
    *,
    stop: Callable[[], None],
    start: Callable[[], None],
    fault: str,
    worker_env: dict[str, str],
    may_lose: int = 0,
) -> None:
    begin = time.monotonic()
    work = rig.app().tasks["faults.work"]
    rig.worker(concurrency=2, env=worker_env)
    total = scale(2000, 20000)
    producer = Producer(work, total, pace=0.002)
    producer.start()

    wait_for(lambda: rig.ledger.completed_count() >= total // 4, timeout=120)
    stop()
    down_at = rig.ledger.completed_count()
    time.sleep(3)  # the broker stays away long enough for every connection to notice
    start()
    producer.join(180)
    assert not producer.is_alive(), "the producer never finished publishing"
    assert down_at < total, "the load finished before the fault; the test proves nothing"

    # Wait for all but ``may_lose`` tasks; then past the visibility timeout (8 s) and a
    # restore sweep, so a straggler restored from the unacked hash is not counted as lost.
    try:
        wait_for(lambda: len(set(producer.sent) - set(rig.ledger.completed())) <= may_lose, timeout=180)
    except AssertionError:
        missing = set(producer.sent) - set(rig.ledger.completed())
        logs = "".join(worker.log() for worker in rig.workers)
        seen = sorted(task_id for task_id in missing if task_id in logs)
        raise AssertionError(
            f"{len(missing)} of {len(producer.sent)} sent tasks never completed "
            f"({rig.ledger.completed_count() - down_at} completed after the restart); "
            f"{len(seen)} of them appear in the worker's log: {seen[:5]}; worker log tail:\n" + logs[-4000:]
        ) from None
    if set(producer.sent) - set(rig.ledger.completed()):
        time.sleep(15)
    missing = set(producer.sent) - set(rig.ledger.completed())
    logs = "".join(worker.log() for worker in rig.workers)
    seen = sorted(task_id for task_id in missing if task_id in logs)
    after_restart = len(set(producer.sent) & set(rig.ledger.completed())) - down_at
    done, _, lost, twice = record(
        report,
        rig,
        "broker restart during load",
        producer.sent,
        f"{fault} after {down_at} tasks completed; broker down ~3 s",
        begin,
        f"{len(producer.failed)} publishes failed after retries (not counted as sent); "
        f"{after_restart} tasks completed after the restart"
        + (f"; lost ids the worker had received: {seen or 'none'}" if missing else "")
        + (f"; {REDIS_POP_WINDOW}" if may_lose else ""),
    )
    assert producer.failed == [], f"publishes given up during the outage: {producer.failed[:3]}"
    assert len(producer.sent) == total
    assert lost <= may_lose
    # A task the worker received must never be lost: the tolerance covers only a message
    # the broker popped but never delivered.
    assert not seen, f"tasks received by the worker and then lost: {seen}"
    # The worker consumed again after reconnecting (the "stops consuming" bug class).
    assert done > down_at
    # Only messages the worker held unacknowledged when the connection dropped may run twice.
    assert len(twice) <= 2 * 2


def test_redis_shutdown_nosave_and_restart(
    persistent_redis: PrivateRedis, rig_factory: Callable[[str, str], FaultRig], reliability_report: Report
) -> None:
    rig = rig_factory("redis", persistent_redis.url)
    _restart_under_load(
        rig,
        reliability_report,
        stop=persistent_redis.shutdown_nosave,
        start=persistent_redis.start,
        fault="Redis SHUTDOWN NOSAVE (appendfsync always) + restart",
        # Messages the worker held when the connection dropped come back after the
        # visibility timeout: 8 s here, so the test need not wait an hour.
        worker_env={"KIT_FAULT_VISIBILITY": "8"},
        may_lose=1,
    )


def test_rabbitmq_node_stop_and_start(
    private_rabbit: PrivateRabbit, rig_factory: Callable[[str, str], FaultRig], reliability_report: Report
) -> None:
    rig = rig_factory("rabbitmq", private_rabbit.url)
    _restart_under_load(
        rig,
        reliability_report,
        stop=private_rabbit.stop,
        start=private_rabbit.start,
        fault="RabbitMQ node stop + start (quorum queue, publisher confirms)",
        worker_env={},
    )
