"""Dead letters on real prefork workers, Redis and RabbitMQ: what goes in, replay, kills.

One worker per broker serves the module. On Redis the broker is a private server of the
module, so the kill-mid-write test can pause its writes (``CLIENT PAUSE``) without
touching anyone else's; the dead letters live on the broker itself (Redis lists and
hashes; a RabbitMQ stream).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Barrier
from typing import Any

import pytest
import redis
from celery import Celery
from click.testing import CliRunner

from celery_kit.deadletter import DeadLetter, DeadLetterStore
from celery_kit.testing import WorkerProcess, read_metric

from .._brokers import PrivateRedis, drop_queue
from .._support import free_port
from ..conftest import RUN_ID
from .conftest import wait_until
from .dead_letter_app import MAX_ENTRIES, build_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-token-value"


@dataclass
class DlqWorker:
    broker: str
    app: Celery
    worker: WorkerProcess
    state: redis.Redis
    prefix: str
    queue: str
    port: int
    private: PrivateRedis | None

    def store(self) -> DeadLetterStore:
        return DeadLetterStore.for_app(self.app)

    def runs(self, key: str) -> list[tuple[str, int]]:
        rows = (
            (raw.decode() if isinstance(raw, bytes) else raw).split()
            for raw in self.state.lrange(f"{self.prefix}:runs:{key}", 0, -1)
        )
        return [(task_id, int(pid)) for task_id, pid in rows]

    def entry(self, task_id: str, timeout: float = 20) -> DeadLetter:
        with self.store() as store:
            try:
                wait_until(lambda: store.get(task_id) is not None, timeout=timeout)
            except AssertionError:
                log = self.worker.log()[-4000:]
                raise AssertionError(f"no dead letter {task_id}; worker log:\n{log}") from None
            entry = store.get(task_id, reveal=True)
        assert entry is not None
        return entry

    def metric(self, name: str, **labels: str) -> float:
        return read_metric(name, labels, port=self.port)

    def publish_raw(
        self, body: bytes, headers: dict[str, Any], content_type: str = "application/json"
    ) -> None:
        with self.app.connection_for_write() as conn:
            conn.Producer().publish(
                body,
                exchange="",
                routing_key=self.queue,
                content_type=content_type,
                content_encoding="utf-8",
                headers=headers,
                retry=True,
            )


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def dlq(
    request: pytest.FixtureRequest, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DlqWorker]:
    private = None
    if request.param == "redis":
        private = PrivateRedis(tmp_path_factory.mktemp("dlq-broker"))
        private.start()
        broker = private.url
    else:
        broker = request.getfixturevalue("amqp_url")
    prefix = f"kit-{RUN_ID}-dlq-{request.param}-{uuid.uuid4().hex[:6]}"
    queue = f"{prefix}-q"
    port = free_port()
    app = build_app(broker, redis_url, queue, redis_url, prefix)
    worker = WorkerProcess(
        "tests.integration.dead_letter_app",
        queues=[queue],
        pool="prefork",
        concurrency=2,
        cwd=ROOT,
        env={
            "KIT_DLQ_BROKER_URL": broker,
            "KIT_DLQ_BACKEND_URL": redis_url,
            "KIT_DLQ_QUEUE": queue,
            "KIT_DLQ_STATE_URL": redis_url,
            "KIT_DLQ_PREFIX": prefix,
            "KIT_DLQ_METRICS_PORT": str(port),
            "PYTHONPATH": str(ROOT),
        },
    )
    state = redis.Redis.from_url(redis_url)
    live = DlqWorker(broker, app, worker, state, prefix, queue, port, private)
    try:
        worker.start()
        yield live
        worker.stop()
        assert drop_queue(app, queue) == 0, "messages left unsettled in the queue"
    finally:
        worker.stop()
        with live.store() as store:
            store.purge(all=True)
            delete = getattr(store.backend, "delete", None)
            if delete is not None:
                delete()
        for key in state.scan_iter(f"{prefix}:*"):
            state.delete(key)
        state.close()
        app.close()
        if private is not None:
            private.stop()


@pytest.fixture
def store(dlq: DlqWorker) -> Iterator[DeadLetterStore]:
    with dlq.store() as store:
        store.purge(all=True)
        yield store


def _key() -> str:
    return uuid.uuid4().hex[:10]


# -- what goes in ------------------------------------------------------------------------------


def test_a_permanent_failure_is_kept_once_with_its_fields(dlq: DlqWorker, store: DeadLetterStore) -> None:
    key = _key()
    result = dlq.app.tasks["dlq.permanent"].delay(ref=key)
    entry = dlq.entry(result.id)
    assert (entry.task_name, entry.task_id, entry.queue) == ("dlq.permanent", result.id, dlq.queue)
    assert (entry.source, entry.kind, entry.reason) == ("task", "permanent", "permanent error")
    assert entry.exception_type == "PermanentError"
    assert f"order {key}" in (entry.exception_message or "")
    assert entry.attempts == 1
    assert entry.hostname
    assert entry.hostname.startswith("kit-")
    assert entry.first_attempt_at is not None
    assert entry.last_attempt_at is not None
    args, kwargs, _embed = json.loads(entry.message.body)
    assert (args, kwargs) == ([], {"ref": key})
    assert entry.message.headers["task"] == "dlq.permanent"
    assert entry.message.headers["id"] == result.id
    assert [e.id for e in store.list(task="dlq.permanent")] == [result.id]


def test_retries_exhausted_is_kept_once_after_the_last_attempt(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    key = _key()
    result = dlq.app.tasks["dlq.flaky"].delay(ref=key)
    entry = dlq.entry(result.id)
    assert (entry.kind, entry.reason, entry.attempts) == ("transient", "retries exhausted", 3)
    assert len(dlq.runs(key)) == 3
    assert entry.first_attempt_at is not None
    assert entry.last_attempt_at is not None
    assert entry.first_attempt_at < entry.last_attempt_at
    assert [e.id for e in store.list()] == [result.id]


def test_an_invalid_payload_is_kept_and_a_replay_keeps_it_with_the_reason(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    task_id = str(uuid.uuid4())
    dlq.app.send_task("dlq.fixable", kwargs={"ref": "k", "amount": "lots", "token": SECRET}, task_id=task_id)
    entry = dlq.entry(task_id)
    assert (entry.kind, entry.reason) == ("invalid_payload", "invalid payload")
    result = store.replay([task_id])
    assert result.replayed == []
    assert "amount" in result.kept[task_id]
    kept = store.get(task_id)
    assert kept is not None
    assert kept.replay_error is not None
    assert "amount" in kept.replay_error
    assert store.ids() == [task_id]


def test_a_lost_worker_not_redelivered_is_kept(dlq: DlqWorker, store: DeadLetterStore) -> None:
    key = _key()
    result = dlq.app.tasks["dlq.lost"].delay(ref=key)
    entry = dlq.entry(result.id, timeout=30)
    assert (entry.source, entry.kind, entry.reason) == ("worker_lost", "worker_lost", "worker lost")
    assert json.loads(entry.message.body)[1] == {"ref": key}
    assert len(dlq.runs(key)) == 1


def test_time_limits_that_are_final_are_kept(dlq: DlqWorker, store: DeadLetterStore) -> None:
    soft, hard = _key(), _key()
    soft_id = dlq.app.tasks["dlq.soft_timeout"].delay(ref=soft).id
    hard_id = dlq.app.tasks["dlq.hard_timeout"].delay(ref=hard).id
    soft_entry, hard_entry = dlq.entry(soft_id), dlq.entry(hard_id)
    assert (soft_entry.kind, soft_entry.reason) == ("timeout", "soft time limit")
    assert (hard_entry.kind, hard_entry.reason) == ("timeout", "hard time limit")
    assert hard_entry.exception_type == "TimeLimitExceeded"
    assert json.loads(hard_entry.message.body)[1] == {"ref": hard}
    assert sorted(store.ids()) == sorted([soft_id, hard_id])


@pytest.mark.parametrize(
    ("name", "body", "headers", "content_type", "reason"),
    [
        ("not-json", b"{not json", {"task": "dlq.permanent"}, "application/json", "decode_error"),
        (
            "pickle",
            b"\x80\x04K\x01.",
            {"task": "dlq.permanent"},
            "application/x-python-serialize",
            "content_type",
        ),
        (
            "unknown-task",
            b'[[], {"ref": "x"}, {}]',
            {"task": "dlq.not_deployed"},
            "application/json",
            "unknown_task",
        ),
        (
            "bad-envelope",
            b'{"not": "a list"}',
            {"task": "dlq.permanent"},
            "application/json",
            "invalid_message",
        ),
    ],
)
def test_a_refused_message_is_kept_with_its_raw_body_and_headers(
    dlq: DlqWorker,
    store: DeadLetterStore,
    name: str,
    body: bytes,
    headers: dict[str, Any],
    content_type: str,
    reason: str,
) -> None:
    task_id = str(uuid.uuid4())
    headers = {**headers, "id": task_id, "lang": "py", "retries": 0, "argsrepr": "", "kwargsrepr": ""}
    dlq.publish_raw(body, headers, content_type)
    entry = dlq.entry(task_id)
    assert (entry.source, entry.kind, entry.reason) == ("message_rejected", "message_rejected", reason)
    assert entry.message.raw_body() == body
    assert entry.message.headers["id"] == task_id
    assert entry.message.content_type == content_type
    assert store.ids() == [task_id]
    # It still cannot run: a replay keeps it, with the reason.
    assert task_id in store.replay([task_id]).kept


# -- replay --------------------------------------------------------------------------------------


def test_replay_after_a_fix_runs_the_task_once_and_removes_the_entry(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    key = _key()
    result = dlq.app.tasks["dlq.fixable"].delay(ref=key, amount=3, token=SECRET)
    dlq.entry(result.id)
    before = dlq.metric("celery_dead_letters_replayed_total", task="dlq.fixable")
    dlq.state.set(f"{dlq.prefix}:fixed", "1")  # the fix is deployed
    try:
        outcome = store.replay([result.id])
        assert outcome.replayed == [result.id]
        assert outcome.ok
        assert store.get(result.id) is None
        # Same task id: the caller's result becomes the replay's.
        wait_until(lambda: dlq.app.backend.get_task_meta(result.id, cache=False)["status"] == "SUCCESS")
        assert dlq.app.backend.get_task_meta(result.id, cache=False)["result"] == key
        wait_until(lambda: dlq.metric("celery_dead_letters_replayed_total", task="dlq.fixable") == before + 1)
        assert len(dlq.runs(key)) == 2  # the failure, then the replay: once
        assert store.ids() == []
    finally:
        dlq.state.delete(f"{dlq.prefix}:fixed")


def test_two_operators_replaying_at_once_publish_each_entry_once(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    keys = [_key() for _ in range(4)]
    ids = [dlq.app.tasks["dlq.fixable"].delay(ref=k, amount=1, token=SECRET).id for k in keys]
    for task_id in ids:
        dlq.entry(task_id)
    dlq.state.set(f"{dlq.prefix}:fixed", "1")
    barrier = Barrier(2)

    def operator(_: int) -> Any:
        with dlq.store() as mine:
            barrier.wait()
            return mine.replay(ids)

    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(operator, range(2)))
        replayed = results[0].replayed + results[1].replayed
        assert sorted(replayed) == sorted(ids)  # each published by exactly one of them
        for key in keys:
            wait_until(lambda key=key: len(dlq.runs(key)) >= 2)  # type: ignore[misc]
        time.sleep(1.0)  # a second publish would have run by now
        assert [len(dlq.runs(k)) for k in keys] == [2] * len(keys)
        assert store.ids() == []
    finally:
        dlq.state.delete(f"{dlq.prefix}:fixed")


# -- secrets -------------------------------------------------------------------------------------


def test_secrets_are_masked_in_list_and_show_but_kept_for_replay(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    result = dlq.app.tasks["dlq.fixable"].delay(ref=_key(), amount=2, token=SECRET)
    dlq.entry(result.id)
    shown = store.get(result.id)
    listed = store.list()
    assert shown is not None
    assert listed
    for entry in (shown, listed[0]):
        text = entry.model_dump_json()
        assert SECRET not in text
        assert "**********" in entry.message.body
    assert SECRET in (store.get(result.id, reveal=True) or shown).message.body  # for the replay

    from celery_kit.cli import kit

    runner = CliRunner()

    class Ctx:
        app = dlq.app

    for args in (["dlq", "list", "--json"], ["dlq", "show", result.id], ["dlq", "show", result.id, "--json"]):
        out = runner.invoke(kit, args, obj=Ctx())
        assert out.exit_code == 0, out.output
        assert SECRET not in out.output
        assert result.id in out.output
    document = json.loads(runner.invoke(kit, ["dlq", "list", "--json"], obj=Ctx()).output)
    assert [e["id"] for e in document["entries"]] == [result.id]


# -- retention -----------------------------------------------------------------------------------


def test_retention_drops_the_oldest_and_counts_it(dlq: DlqWorker, store: DeadLetterStore) -> None:
    before = dlq.metric("celery_dead_letters_dropped_total", task="dlq.permanent")
    dropped_before = store.stats().dropped.get("dlq.permanent", 0)
    ids = []
    for _ in range(MAX_ENTRIES + 2):
        task_id = dlq.app.tasks["dlq.permanent"].delay(ref=_key()).id
        dlq.entry(task_id)  # one at a time: their order is known
        ids.append(task_id)
    wait_until(lambda: store.stats().total == MAX_ENTRIES, timeout=20)
    assert sorted(store.ids()) == sorted(ids[2:])  # the two oldest went
    assert store.stats().dropped["dlq.permanent"] == dropped_before + 2
    wait_until(lambda: dlq.metric("celery_dead_letters_dropped_total", task="dlq.permanent") == before + 2)
    wait_until(lambda: dlq.metric("celery_dead_letters", task="dlq.permanent") == MAX_ENTRIES)


# -- kills ---------------------------------------------------------------------------------------


def _kill_the_runner(dlq: DlqWorker, key: str) -> None:
    wait_until(lambda: bool(dlq.runs(key)))
    _, pid = dlq.runs(key)[0]
    os.kill(pid, signal.SIGKILL)


def test_a_kill_after_the_write_before_the_ack_keeps_one_entry(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    key = _key()
    dlq.state.delete(f"{dlq.prefix}:runs:held-written")
    result = dlq.app.tasks["dlq.held"].delay(ref=key)
    wait_until(lambda: dlq.state.llen(f"{dlq.prefix}:runs:held-written") == 1)
    assert store.get(result.id) is not None  # written; the message is not acknowledged yet
    _kill_the_runner(dlq, key)
    wait_until(lambda: len(dlq.runs(key)) == 2, timeout=40)  # redelivered, failed again
    wait_until(lambda: dlq.state.llen(f"{dlq.prefix}:runs:held-written") == 2)
    assert store.ids() == [result.id]  # once
    entry = store.get(result.id)
    assert entry is not None
    assert entry.reason == "permanent error"


def test_a_kill_while_writing_loses_nothing_and_keeps_one_entry(
    dlq: DlqWorker, store: DeadLetterStore
) -> None:
    """Redis: the store's writes are paused, the pool process is killed inside its write.
    RabbitMQ: the record reached the stream, the writer is killed before it returned."""
    key = _key()
    dlq.state.delete(f"{dlq.prefix}:runs:slow-write-stalled")
    try:
        dlq.app.tasks["dlq.slow_write"].apply_async(kwargs={"ref": key}, task_id=key)
        if dlq.private is not None:
            wait_until(lambda: len(dlq.runs(key)) == 1)
            time.sleep(1.0)  # it paused the broker's writes and is stuck in its dead-letter write
            assert store.backend.entries() == []  # reads still work: nothing written yet
        else:
            wait_until(lambda: dlq.state.llen(f"{dlq.prefix}:runs:slow-write-stalled") == 1)
        os.kill(dlq.runs(key)[0][1], signal.SIGKILL)
        time.sleep(0.5)
    finally:
        if dlq.private is not None:
            broker = dlq.private.client()
            broker.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
            broker.close()
    wait_until(lambda: len(dlq.runs(key)) == 2, timeout=40)  # redelivered to a new pool process
    entry = dlq.entry(key)
    assert entry.reason == "permanent error"
    assert entry.source == "task"
    time.sleep(0.5)
    assert store.ids() == [key]  # once
    assert [e.id for e in store.list()] == [key]
