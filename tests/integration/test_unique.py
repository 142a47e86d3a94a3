"""Unique tasks on a real prefork worker: one message per key, kills, retries, redelivery.

One worker (Redis broker, two pool processes) serves the module; the locks live in a
private Redis of the module, so the tests can count the lock's round trips.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from prometheus_client import CollectorRegistry

from celery_kit import DuplicateTaskError, MessageRejectedError, PayloadValidationError, dispatcher_for
from celery_kit._unique import UNIQUE_HEADER
from celery_kit.metrics import MetricsObserver, TaskMetrics
from celery_kit.testing import WorkerProcess, read_metric

from .._brokers import PrivateRedis, drop_queue
from .._support import free_port, wait_for
from ..conftest import RUN_ID
from .redis_probes import CommandLog, LatencyProxy
from .unique_app import LEASE, build_app, publish_burst

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class UniqueWorker:
    app: Celery
    worker: WorkerProcess
    state: redis.Redis
    locks: redis.Redis
    prefix: str
    urls: tuple[str, str, str, str, str]
    metrics_port: int

    def started(self, user_id: str) -> list[tuple[str, int]]:
        entries = (_text(raw).split() for raw in self.state.lrange(f"{self.prefix}:started:{user_id}", 0, -1))
        return [(task_id, int(pid)) for task_id, pid in entries]

    def go(self, user_id: str) -> None:
        self.state.rpush(f"{self.prefix}:go:{user_id}", "1")

    def lock(self, task: str, user_id: str) -> str | None:
        value = self.locks.get(f"celery_kit:unique:{task}:{json.dumps([user_id])}")
        return None if value is None else _text(value)

    def lock_ttl_ms(self, task: str, user_id: str) -> int:
        return int(self.locks.pttl(f"celery_kit:unique:{task}:{json.dumps([user_id])}"))

    def commands(self) -> int:
        """Commands the lock store has run, all clients but this one's ``INFO`` calls."""
        stats = self.locks.info("commandstats")
        return sum(int(entry["calls"]) for name, entry in stats.items() if name != "cmdstat_info")


@pytest.fixture(scope="module")
def unique_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UniqueWorker]:
    lock_store = PrivateRedis(tmp_path_factory.mktemp("locks"))
    lock_store.start()
    prefix = f"kit-unique-{RUN_ID}"
    queue = f"{prefix}-tasks"
    urls = (redis_url, redis_url, queue, lock_store.url, prefix)
    metrics_port = free_port()
    app = build_app(*urls)
    worker = WorkerProcess(
        "tests.integration.unique_app",
        queues=[queue],
        pool="prefork",
        concurrency=2,
        cwd=ROOT,
        env={
            "KIT_UNIQUE_BROKER_URL": redis_url,
            "KIT_UNIQUE_BACKEND_URL": redis_url,
            "KIT_UNIQUE_QUEUE": queue,
            "KIT_UNIQUE_LOCK_URL": lock_store.url,
            "KIT_UNIQUE_PREFIX": prefix,
            "KIT_UNIQUE_METRICS_PORT": str(metrics_port),
            "PYTHONPATH": str(ROOT),
        },
    )
    state = redis.Redis.from_url(redis_url)
    try:
        worker.start()
        yield UniqueWorker(app, worker, state, lock_store.client(), prefix, urls, metrics_port)
    finally:
        worker.stop()
        worker.remove_log()
        drop_queue(app, queue)
        for key in state.scan_iter(f"{prefix}:*"):
            state.delete(key)
        state.close()
        lock_store.stop()


@dataclass
class SlowLockWorker:
    """A worker whose lock store answers through a :class:`LatencyProxy`."""

    unique: UniqueWorker
    proxy: LatencyProxy
    log: CommandLog


@pytest.fixture(scope="module")
def slow_lock_worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowLockWorker]:
    lock_store = PrivateRedis(tmp_path_factory.mktemp("slow-locks"))
    lock_store.start()
    proxy = LatencyProxy(lock_store.port)
    prefix = f"kit-unique-slow-{RUN_ID}"
    queue = f"{prefix}-tasks"
    urls = (redis_url, redis_url, queue, proxy.url, prefix)
    app = build_app(*urls)
    worker = WorkerProcess(
        "tests.integration.unique_app",
        queues=[queue],
        pool="prefork",
        concurrency=1,
        cwd=ROOT,
        env={
            "KIT_UNIQUE_BROKER_URL": redis_url,
            "KIT_UNIQUE_BACKEND_URL": redis_url,
            "KIT_UNIQUE_QUEUE": queue,
            "KIT_UNIQUE_LOCK_URL": proxy.url,
            "KIT_UNIQUE_PREFIX": prefix,
            "KIT_UNIQUE_METRICS_PORT": str(free_port()),
            "PYTHONPATH": str(ROOT),
        },
    )
    state = redis.Redis.from_url(redis_url)
    try:
        worker.start()
        log = CommandLog(lock_store.port)
        try:
            yield SlowLockWorker(
                UniqueWorker(app, worker, state, lock_store.client(), prefix, urls, 0), proxy, log
            )
        finally:
            log.close()
    finally:
        worker.stop()
        worker.remove_log()
        drop_queue(app, queue)
        for key in state.scan_iter(f"{prefix}:*"):
            state.delete(key)
        state.close()
        proxy.close()
        lock_store.stop()


@contextlib.contextmanager
def _parked_queue(w: UniqueWorker) -> Iterator[str]:
    """A queue of the broker that no worker reads, deleted afterwards."""
    parked = f"{w.prefix}-parked-{os.urandom(3).hex()}"
    try:
        yield parked
    finally:
        drop_queue(w.app, parked)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _user(name: str) -> str:
    return f"{name}-{RUN_ID}-{os.urandom(3).hex()}"


def test_a_second_delay_for_a_key_publishes_nothing_and_other_keys_are_free(
    unique_worker: UniqueWorker,
) -> None:
    w = unique_worker
    hold = w.app.tasks["unique.hold"]
    user, other = _user("a"), _user("b")
    first = hold.delay(user_id=user)
    with pytest.raises(DuplicateTaskError) as refused:
        hold.delay(user_id=user, wait=1)
    assert refused.value.existing_task_id == first.id
    assert refused.value.key == f"celery_kit:unique:unique.hold:{json.dumps([user])}"
    second = hold.delay(user_id=other)  # another key is not blocked
    wait_for(lambda: w.started(user) and w.started(other))
    w.go(user)
    w.go(other)
    assert first.get(timeout=30) == user
    assert second.get(timeout=30) == other
    assert [task_id for task_id, _ in w.started(user)] == [first.id]  # one message ran
    assert w.lock("unique.hold", user) is None  # released by the success
    again = hold.delay(user_id=user)  # and the key can be taken again
    w.go(user)
    assert again.get(timeout=30) == user
    assert [task_id for task_id, _ in w.started(user)] == [first.id, again.id]


def test_a_message_published_around_the_kit_gets_the_same_key(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    user = _user("raw")
    first = w.app.tasks["unique.hold"].delay(user_id=user)
    wait_for(lambda: w.started(user))
    raw = w.app.send_task("unique.hold", args=[{"user_id": user, "wait": 1}])  # no key header
    with pytest.raises(DuplicateTaskError) as refused:  # the worker built the key itself
        raw.get(timeout=30)
    assert refused.value.existing_task_id == first.id
    invalid = w.app.send_task("unique.hold", args=[{"wait": 1}])  # refused as any invalid payload
    with pytest.raises(PayloadValidationError):
        invalid.get(timeout=30)
    w.go(user)
    assert first.get(timeout=30) == user
    assert [task_id for task_id, _ in w.started(user)] == [first.id]


def test_a_raw_message_keeps_its_lock_across_a_retry(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    user = _user("raw-retry")
    raw = w.app.send_task("unique.flaky", args=[{"user_id": user}])  # no key header, no token
    wait_for(lambda: w.started(user))
    w.go(user)  # fails once, retried with the same task id: it claims its own lock again
    assert raw.get(timeout=30) == 2
    assert w.lock("unique.flaky", user) is None


#: How long each reply of the lock store takes through the proxy: a round trip's unit.
DELAY = 1.5


@pytest.mark.parametrize(
    ("mode", "waits", "commands"),
    [
        ("queued", {"publish": 1, "start": 0, "finish": 1}, 3),  # acquire; lease sent, not awaited; release
        ("running", {"publish": 0, "start": 1, "finish": 1}, 2),  # claim; release
    ],
)
def test_round_trips_per_task_measured_through_a_slow_lock_store(
    slow_lock_worker: SlowLockWorker, mode: str, waits: dict[str, int], commands: int
) -> None:
    """Every reply of the lock store is 1.5 s late: the time each step takes counts its waits."""
    w, proxy, log = slow_lock_worker.unique, slow_lock_worker.proxy, slow_lock_worker.log
    task = w.app.tasks[f"unique.timed_{mode}"]
    for _ in range(2):  # connections opened and scripts loaded: a steady state is measured
        task.delay(user_id=_user("warm")).get(timeout=30)
    user = _user(f"rt-{mode}")
    proxy.delay = DELAY
    try:
        with _parked_queue(w) as parked:  # a publish alone: no worker reads this queue
            clock = time.time()
            task.apply_async(kwargs={"user_id": _user("parked")}, queue=parked)
            parked_window = (clock, time.time())
        begin = time.time()
        result = task.delay(user_id=user)
        published, published_at = time.time() - begin, time.time()
        assert result.get(timeout=30) == user
        task_window = (begin, time.time())
    finally:
        proxy.delay = 0.0
    log.sync()
    (stamps,) = [_text(raw).split() for raw in w.state.lrange(f"{w.prefix}:timed:{user}", 0, -1)]
    started, ended = (float(stamp) for stamp in stamps)
    done = result.date_done
    done_at = (done if done.tzinfo else done.replace(tzinfo=datetime.timezone.utc)).timestamp()
    measured = {
        "publish": published / DELAY,  # delay() returned
        "start": (started - published_at) / DELAY,  # from then to the body's first line
        "finish": (done_at - ended) / DELAY,  # from its last line to the stored result
    }
    assert {step: int(value) for step, value in measured.items()} == waits, measured
    assert len(log.commands(*parked_window)) == waits["publish"]  # a publish alone
    assert len(log.commands(*task_window)) == commands, log.commands(*task_window)


def test_a_redelivered_message_whose_key_was_taken_meanwhile_does_not_run(
    unique_worker: UniqueWorker,
) -> None:
    """As kombu restores a message after a worker loss: ``redelivered`` set, the lock lapsed."""
    w = unique_worker
    hold = w.app.tasks["unique.hold"]
    user = _user("lapsed")
    with _parked_queue(w) as parked:  # no worker reads it
        original = hold.apply_async(kwargs={"user_id": user, "wait": 1}, queue=parked)
        assert w.lock("unique.hold", user) is not None
        w.locks.delete(f"celery_kit:unique:unique.hold:{json.dumps([user])}")  # its lease ran out
        taker = hold.delay(user_id=user)  # another message takes the key and runs
        wait_for(lambda: w.started(user))
        raw = w.state.rpop(parked)
    assert isinstance(raw, bytes)
    message = json.loads(raw)
    assert message["headers"][UNIQUE_HEADER]["until"] > time.time()  # the fast path would run it
    message["properties"]["delivery_info"].update(routing_key=w.urls[2], redelivered=True)
    message["headers"]["redelivered"] = True
    w.state.lpush(w.urls[2], json.dumps(message))
    with pytest.raises(DuplicateTaskError) as refused:  # the redelivery checked the lock first
        original.get(timeout=30)
    assert refused.value.existing_task_id == taker.id
    w.go(user)
    assert taker.get(timeout=30) == user
    assert [task_id for task_id, _ in w.started(user)] == [taker.id]


def test_a_message_the_worker_refuses_releases_its_lock(
    unique_worker: UniqueWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = unique_worker
    flaky = w.app.tasks["unique.flaky"]
    user = _user("refused")
    # Celery's typing=False: the caller checks nothing, so the lock is taken and a payload
    # above the worker's cap is sent; the worker refuses it before any task runs.
    monkeypatch.setattr(flaky, "typing", False)
    refused = flaky.delay(user_id=user, note="x" * 300_000)
    assert w.lock("unique.flaky", user) is not None
    with pytest.raises(MessageRejectedError):
        refused.get(timeout=30)
    wait_for(lambda: w.lock("unique.flaky", user) is None, timeout=10)  # not the 120 s ttl
    assert w.started(user) == []


def test_a_retry_keeps_the_lock_and_the_final_outcome_releases_it(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    flaky = w.app.tasks["unique.flaky"]
    user = _user("retry")
    result = flaky.delay(user_id=user)
    wait_for(lambda: w.started(user))
    w.go(user)  # the first attempt raises ConnectionError: retried in 3 s
    wait_for(lambda: result.state == "RETRY")
    assert len(w.started(user)) == 1  # between the attempts, the lock is kept for its ttl
    holder = w.lock("unique.flaky", user)
    assert holder is not None
    assert holder.startswith(f"{result.id}|")
    assert w.lock_ttl_ms("unique.flaky", user) > LEASE * 1000
    with pytest.raises(DuplicateTaskError) as refused:
        flaky.delay(user_id=user)
    assert refused.value.existing_task_id == result.id
    assert result.get(timeout=30) == 2  # the retry claimed the same lock and ran
    assert [task_id for task_id, _ in w.started(user)] == [result.id, result.id]
    assert w.lock("unique.flaky", user) is None


def test_a_running_task_renews_its_lock_and_kill_9_frees_it_within_the_lease(
    unique_worker: UniqueWorker,
) -> None:
    w = unique_worker
    hold = w.app.tasks["unique.hold"]
    user = _user("kill")
    first = hold.delay(user_id=user, wait=60)
    wait_for(lambda: w.started(user))
    running_since = time.monotonic()
    time.sleep(LEASE * 1.5)  # past its first lease: only the renewals keep it
    assert time.monotonic() - running_since > LEASE
    holder = w.lock("unique.hold", user)
    assert holder is not None
    assert holder.startswith(f"{first.id}|")
    ((_, pid),) = w.started(user)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(DuplicateTaskError):  # held until its lease runs out
        hold.delay(user_id=user)
    wait_for(lambda: w.lock("unique.hold", user) is None, timeout=LEASE + 3)
    assert time.monotonic() - killed < LEASE + 3  # the lease, far under the 120 s ttl
    again = hold.delay(user_id=user)
    w.go(user)
    assert again.get(timeout=30) == user


def test_redelivery_after_a_kill_runs_the_original_message(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    task = w.app.tasks["unique.redelivered"]
    user = _user("redeliver")
    result = task.delay(user_id=user)
    wait_for(lambda: w.started(user))
    ((_, pid),) = w.started(user)
    os.kill(pid, signal.SIGKILL)  # acks_late + reject_on_worker_lost: the message comes back
    assert result.get(timeout=30) == 2  # the same message took its own lock back and ran
    assert [task_id for task_id, _ in w.started(user)] == [result.id, result.id]
    assert w.lock("unique.redelivered", user) is None


def test_a_revoked_task_releases_its_lock_from_the_main_process(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    task = w.app.tasks["unique.revocable"]  # a 60 s lease: only the release can free it in time
    user = _user("revoke")
    result = task.delay(user_id=user, wait=60)
    wait_for(lambda: w.started(user))
    result.revoke(terminate=True, signal="SIGKILL")
    wait_for(lambda: w.lock("unique.revocable", user) is None, timeout=15)
    again = task.delay(user_id=user)
    w.go(user)
    assert again.get(timeout=30) == user


def test_running_mode_queues_both_but_runs_one(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    task = w.app.tasks["unique.running"]
    user = _user("running")
    first = task.delay(user_id=user)
    wait_for(lambda: w.started(user))
    second = task.delay(user_id=user)  # published: only running is exclusive
    with pytest.raises(DuplicateTaskError) as refused:
        second.get(timeout=30)
    assert refused.value.existing_task_id == first.id
    w.go(user)
    assert first.get(timeout=30) == user
    assert [task_id for task_id, _ in w.started(user)] == [first.id]
    labels = {"task": "unique.running", "side": "worker"}
    wait_for(lambda: read_metric("celery_task_duplicates_refused_total", labels, port=w.metrics_port) == 1)


def test_running_mode_with_skip_drops_the_duplicate_on_the_worker(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    task = w.app.tasks["unique.running_skip"]
    user = _user("skip")
    first = task.delay(user_id=user)
    wait_for(lambda: w.started(user))
    second = task.delay(user_id=user)
    labels = {"task": "unique.running_skip", "side": "worker"}
    wait_for(lambda: read_metric("celery_task_duplicates_refused_total", labels, port=w.metrics_port) == 1)
    w.go(user)
    assert first.get(timeout=30) == user
    assert second.state == "PENDING"  # dropped as Celery's Ignore drops it: no result stored
    assert [task_id for task_id, _ in w.started(user)] == [first.id]


def test_concurrent_delays_from_threads_and_processes_publish_exactly_one(
    unique_worker: UniqueWorker,
) -> None:
    w = unique_worker
    user = _user("burst")
    start_at = time.time() + 3  # both processes are importing by then
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        bursts = [pool.submit(publish_burst, w.urls, user, 20, start_at) for _ in range(2)]
        outcomes = [outcome for burst in bursts for outcome in burst.result(timeout=60)]
    published = [outcome for outcome in outcomes if outcome != "duplicate"]
    assert len(outcomes) == 40
    assert len(published) == 1
    w.go(user)
    w.app.AsyncResult(published[0]).get(timeout=30)
    assert [task_id for task_id, _ in w.started(user)] == published


def test_metrics_count_duplicates_refused(unique_worker: UniqueWorker) -> None:
    w = unique_worker
    registry = CollectorRegistry()
    observer = MetricsObserver(TaskMetrics(registry))
    dispatcher = dispatcher_for(w.app)
    dispatcher.subscribe(observer)
    hold = w.app.tasks["unique.hold"]
    user = _user("metrics")
    labels = {"task": "unique.hold", "queue": "unknown", "side": "caller"}
    try:
        first = hold.delay(user_id=user)
        for _ in range(2):
            with pytest.raises(DuplicateTaskError):
                hold.delay(user_id=user)
        assert registry.get_sample_value("celery_task_duplicates_refused_total", labels) == 2
        w.go(user)
        first.get(timeout=30)
    finally:
        dispatcher.unsubscribe(observer)
