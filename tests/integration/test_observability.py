"""Logs and metrics of real workers: prefork (concurrency 2, recycled children) and threads."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from celery import Celery, chain
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from celery_kit.testing import WorkerProcess, read_metric

from .._support import free_port, json_lines, wait_for
from ..conftest import RUN_ID
from .observed_app import build_app

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30
SECRET = f"hunter2-{uuid.uuid4().hex}"


class Observed:
    def __init__(self, app: Celery, worker: WorkerProcess, port: int) -> None:
        self.app = app
        self.worker = worker
        self.port = port
        #: The worker's node name, for remote control commands sent to it alone.
        self.node = worker.hostname

    def scrape_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = self.scrape_text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return read_metric(name, labels, port=self.port)

    def log_lines(self) -> list[dict[str, Any]]:
        return json_lines(self.worker.log())


def _start(pool: str, redis_url: str, name: str = "", tag: str = "") -> tuple[Observed, str]:
    prefix = f"kit-{RUN_ID}-obs{tag}-{pool}{name}"
    queue = f"{prefix}-q"
    port = free_port()
    app = build_app(redis_url, queue, port, redis_url, prefix)
    worker = WorkerProcess(
        "tests.integration.observed_app",
        queues=[queue],
        pool=pool,
        concurrency=2 if pool == "prefork" else 4,
        hostname=f"{prefix}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        cwd=ROOT,
        env={
            "KIT_OBS_BROKER_URL": redis_url,
            "KIT_OBS_QUEUE": queue,
            "KIT_OBS_METRICS_PORT": str(port),
            "KIT_OBS_STATE_URL": redis_url,
            "KIT_OBS_PREFIX": prefix,
            "PYTHONPATH": str(ROOT),
        },
    )
    worker.start()
    return Observed(app, worker, port), queue


@pytest.fixture(scope="module")
def prefork(redis_url: str) -> Iterator[Observed]:
    observed, queue = _start("prefork", redis_url)
    try:
        yield observed
    finally:
        observed.worker.stop()
        with observed.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_metrics_count_every_outcome_exactly_across_recycled_children(prefork: Observed) -> None:
    tasks = prefork.app.tasks
    results = [tasks["obs.ok"].delay(n) for n in range(12)]
    results += [tasks["obs.fail"].delay(n) for n in range(3)]
    results += [tasks["obs.flaky"].delay(f"m{n}") for n in range(2)]
    raw = [prefork.app.send_task("obs.ok", kwargs={"n": "not a number"}) for _ in range(2)]
    with pytest.raises(ValidationError):
        tasks["obs.ok"].delay("refused in the caller")
    for result in results + raw:
        result.get(timeout=TIMEOUT, propagate=False)
    stubborn = tasks["obs.stubborn"].delay()
    stubborn.get(timeout=TIMEOUT, propagate=False)
    assert stubborn.state == "FAILURE"

    v = prefork.value
    # The hard-limit failure is counted by the main process, the rest by the children.
    wait_for(lambda: v("celery_task_timeouts_total", task="obs.stubborn", kind="hard") == 1)
    assert v("celery_task_started_total", task="obs.ok") == 14  # 12 valid + 2 invalid messages
    assert v("celery_task_finished_total", task="obs.ok", outcome="succeeded") == 12
    assert v("celery_task_finished_total", task="obs.ok", outcome="failed") == 2
    assert v("celery_task_validation_errors_total", task="obs.ok", side="worker") == 2
    assert v("celery_task_finished_total", task="obs.fail", outcome="failed") == 3
    assert v("celery_task_failures_total", task="obs.fail", exception="PermanentError", final="true") == 3
    assert v("celery_task_started_total", task="obs.flaky") == 4
    assert v("celery_task_finished_total", task="obs.flaky", outcome="retried") == 2
    assert v("celery_task_finished_total", task="obs.flaky", outcome="succeeded") == 2
    assert v("celery_task_failures_total", task="obs.flaky", exception="ConnectionError", final="false") == 2
    assert v("celery_task_finished_total", task="obs.stubborn", outcome="failed") == 1
    assert v("celery_task_duration_seconds_count", task="obs.ok") == 14
    assert v("celery_task_queue_wait_seconds_count", task="obs.ok") == 14
    assert v("celery_task_in_progress") == 0  # the killed child's +1 is swept away
    assert v("celery_task_last_success_timestamp_seconds", task="obs.ok") > time.time() - 300
    # 22 attempts with max_tasks_per_child=5, plus the killed child: children were replaced.
    assert v("celery_worker_process_restarts_total") >= 3
    task_labels = {
        label for (name, ls) in prefork.scrape() if name.startswith("celery_task") for label, _ in ls
    }
    assert task_labels <= {"task", "queue", "outcome", "exception", "final", "side", "kind", "le"}
    alert_labels = {
        label for (name, ls) in prefork.scrape() if name.startswith("celery_kit_") for label, _ in ls
    }
    assert alert_labels <= {"sink", "result"}


def test_a_killed_pool_process_is_counted_as_worker_lost(prefork: Observed, redis_client: Any) -> None:
    marker = f"kit-{RUN_ID}-victim-{uuid.uuid4().hex[:6]}"
    result = prefork.app.tasks["obs.victim"].delay(marker)
    wait_for(lambda: redis_client.get(marker) is not None)
    os.kill(int(redis_client.get(marker)), signal.SIGKILL)
    result.get(timeout=TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    v = prefork.value
    wait_for(lambda: v("celery_task_failures_total", task="obs.victim", exception="WorkerLostError") == 1)
    assert v("celery_task_failures_total", task="obs.victim", final="true") == 1
    assert v("celery_task_finished_total", task="obs.victim", outcome="failed") == 1
    assert v("celery_task_in_progress", task="obs.victim") == 0
    lost = [line for line in prefork.log_lines() if line.get("classification") == "worker_lost"]
    assert [line["task_id"] for line in lost] == [result.id]


def test_worker_logs_are_json_lines_with_context_from_the_producer(prefork: Observed) -> None:
    tasks = prefork.app.tasks
    structlog.contextvars.bind_contextvars(request_id="req-42", correlation_id="corr-42")
    try:
        login = tasks["obs.login"].delay(user="ada", password=SECRET)
        workflow = chain(tasks["obs.ok"].s(7), tasks["obs.ok"].s()).apply_async()
    finally:
        structlog.contextvars.clear_contextvars()
    login.get(timeout=TIMEOUT)
    workflow.get(timeout=TIMEOUT)

    def all_logged() -> bool:
        # The result is stored before the attempt's last line is written.
        done = {line.get("task_id") for line in prefork.log_lines() if line.get("event") == "task succeeded"}
        inside = {line.get("task_id") for line in prefork.log_lines() if line.get("event") == "inside task"}
        return {login.id, workflow.id, workflow.parent.id} | inside <= done

    wait_for(all_logged)
    lines = prefork.log_lines()

    def of(task_id: str) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("task_id") == task_id]

    inside = [line for line in lines if line.get("event") == "inside task"]
    assert inside  # that nothing leaks between tasks is shown by the tests of obs.ctx below
    task_logger_lines = [line for line in lines if str(line.get("event", "")).startswith("task logger line")]
    assert task_logger_lines
    assert all(line["logger"] == "observed.tasks" and line["task_id"] for line in task_logger_lines)

    login_lines = of(login.id)
    assert {line["event"] for line in login_lines} >= {"task started", "logging in", "task succeeded"}
    assert all(line["request_id"] == "req-42" for line in login_lines)
    succeeded = next(line for line in login_lines if line["event"] == "task succeeded")
    assert succeeded["payload"] == {"user": "ada", "password": "**********"}
    assert succeeded["duration_seconds"] >= 0
    assert SECRET not in prefork.worker.log()
    for task_id in (workflow.parent.id, workflow.id):
        assert {line["correlation_id"] for line in of(task_id)} == {"corr-42"}
        assert {line["root_id"] for line in of(task_id)} == {workflow.parent.id}


#: What Celery writes straight to the terminal, past logging (docs/observability.md).
NOT_JSON = ("", "worker: Warm shutdown (MainProcess)")


def test_every_line_a_json_worker_writes_is_a_json_object(redis_url: str) -> None:
    observed, queue = _start("prefork", redis_url, "-json")  # not the module's worker
    try:
        assert observed.app.tasks["obs.noisy"].delay("n-1").get(timeout=TIMEOUT) == "n-1"
        wait_for(lambda: "noisy warning n-1" in observed.worker.log())
    finally:
        observed.worker.stop()
        with observed.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
    text = observed.worker.log()
    observed.worker.remove_log()
    plain = [line for line in text.splitlines() if not line.startswith("{")]
    assert plain == list(NOT_JSON), plain
    lines = json_lines(text)
    assert len(lines) == len(text.splitlines()) - len(plain)  # every "{" line is one JSON object

    (banner,) = [line for line in lines if line["event"] == "worker starting"]
    assert banner["queues"] == [queue]
    assert {"obs.ok", "obs.noisy"} <= set(banner["tasks"])
    assert banner["pool"] == "celery.concurrency.prefork"
    assert banner["broker"].startswith("redis://")
    (warned,) = [line for line in lines if "noisy warning n-1" in line["event"]]
    assert (warned["logger"], warned["level"]) == ("py.warnings", "warning")
    (printed,) = [line for line in lines if line["event"] == "noisy print n-1"]
    assert printed["logger"] == "celery.redirected"


def test_hard_limit_and_invalid_payload_are_logged_with_their_classification(prefork: Observed) -> None:
    def failed_lines() -> list[dict[str, Any]]:
        wanted = ("task failed", "task payload invalid")
        return [line for line in prefork.log_lines() if line.get("event") in wanted]

    wait_for(lambda: len({line["classification"] for line in failed_lines()}) >= 3)
    failed = failed_lines()
    kinds = {(line["task_name"], line["classification"], line["reason"]) for line in failed}
    assert ("obs.stubborn", "timeout", "hard time limit") in kinds
    assert ("obs.ok", "invalid_payload", "invalid payload") in kinds
    invalid = next(line for line in failed if line["classification"] == "invalid_payload")
    assert invalid["validation_errors"][0]["loc"] == ["n"]
    assert "not a number" not in json.dumps(invalid)


def _publish_ctx_tasks(app: Celery, count: int) -> dict[str, AsyncResult]:
    """``obs.ctx`` tasks, each with its own producer ``correlation_id``; every third fails."""
    results = {}
    for n in range(count):
        tag = f"c{n}x{uuid.uuid4().hex[:8]}"
        structlog.contextvars.bind_contextvars(correlation_id=f"corr-{tag}")
        try:
            results[tag] = app.tasks["obs.ctx"].apply_async((tag,), {"fail": n % 3 == 2})
        finally:
            structlog.contextvars.clear_contextvars()
    return results


_ENDS = ("task succeeded", "task failed")


def _ctx_tasks_logged(observed: Observed, results: dict[str, AsyncResult]) -> bool:
    # The result is stored before the attempt's last line is written.
    ids = {result.id for result in results.values()}
    ended = [
        line for line in observed.log_lines() if line.get("event") in _ENDS and line.get("task_id") in ids
    ]
    return len(ended) >= len(ids)


def _assert_lines_carry_their_own_task_only(
    lines: list[dict[str, Any]], results: dict[str, AsyncResult]
) -> Counter[int]:
    """Every line written by or about one of the ``obs.ctx`` tasks carries that task's
    ids (``task_id``, the producer's ``correlation_id``) and no key another task bound;
    no other line carries any of them. Returns how many tasks each process ran."""
    task_of = {tag: result.id for tag, result in results.items()}
    tag_of = {result.id: tag for tag, result in results.items()}
    bound = {f"bound_{tag}" for tag in task_of}
    correlation_ids = {f"corr-{tag}" for tag in task_of}
    seen: Counter[tuple[str, str]] = Counter()
    pids: dict[str, set[int]] = {}
    for line in lines:
        event = str(line.get("event", ""))
        # Which task wrote the line, from what the task passed explicitly -- never from
        # the context under test.
        writer = event.removeprefix("ctx task logger ") if event.startswith("ctx task logger ") else None
        writer = line.get("tag", writer)
        owner = tag_of.get(line.get("task_id"))
        leaked = bound & line.keys()
        if writer in task_of:
            assert owner == writer, line
            assert line.get("correlation_id") == f"corr-{writer}", line
            assert leaked <= {f"bound_{writer}"}, line
            seen[(writer, "body")] += 1
            if "pid" in line:
                pids.setdefault(writer, set()).add(line["pid"])
        elif owner is not None:  # its start and end, Celery's own failure line, its alert
            assert leaked <= {f"bound_{owner}"}, line
            if event in ("task started", *_ENDS):
                assert line.get("correlation_id") == f"corr-{owner}", line
                seen[(owner, event)] += 1
            else:  # the alert log line is written by the delivery thread: no task context
                assert line.get("correlation_id") in (None, f"corr-{owner}"), line
        else:
            assert not leaked, line
            assert line.get("correlation_id") not in correlation_ids, line
    for tag in task_of:
        assert seen[(tag, "body")] == 3, tag  # two "ctx line"s and one task-logger line
        assert seen[(tag, "task started")] == 1, tag
        assert seen[(tag, "task succeeded")] + seen[(tag, "task failed")] == 1, tag
        assert len(pids[tag]) == 1
    return Counter(pid for tag_pids in pids.values() for pid in tag_pids)


def test_no_context_leaks_between_tasks_of_a_prefork_child(prefork: Observed) -> None:
    results = _publish_ctx_tasks(prefork.app, 12)
    for result in results.values():
        result.get(timeout=TIMEOUT, propagate=False)
    assert [r.state for r in results.values()].count("FAILURE") == 4
    wait_for(lambda: _ctx_tasks_logged(prefork, results))
    per_process = _assert_lines_carry_their_own_task_only(prefork.log_lines(), results)
    # Concurrency 2, five tasks per child: children ran several tasks one after another.
    assert max(per_process.values()) >= 2


def test_rejected_and_revoked_attempts_are_counted_and_logged_once(
    prefork: Observed, redis_client: Any
) -> None:
    tasks = prefork.app.tasks
    v = prefork.value
    # Reject(requeue=False): the pool process ends the attempt as rejected; Celery's main
    # process then stores a FAILURE result and sends task_failure, which must not count
    # the attempt a second time, as failed.
    rejected = tasks["obs.reject"].delay()
    rejected.get(timeout=TIMEOUT, propagate=False)
    assert rejected.state == "FAILURE"

    # Revoked before it runs: the worker's main process discards the message.
    early_id = uuid.uuid4().hex
    replies = prefork.app.control.revoke(early_id, destination=[prefork.node], reply=True, timeout=10)
    assert replies  # the worker holds the id before the message is published
    early = tasks["obs.sleeper"].apply_async((f"kit-{RUN_ID}-never-{early_id}",), task_id=early_id)
    early.get(timeout=TIMEOUT, propagate=False)
    assert early.state == "REVOKED"

    # Revoked with terminate=True while it runs: the main process kills the pool process.
    marker = f"kit-{RUN_ID}-sleeper-{uuid.uuid4().hex[:6]}"
    running = tasks["obs.sleeper"].delay(marker)
    wait_for(lambda: redis_client.get(marker) is not None)
    restarts = v("celery_worker_process_restarts_total")
    prefork.app.control.revoke(running.id, destination=[prefork.node], terminate=True)
    running.get(timeout=TIMEOUT, propagate=False)
    assert running.state == "REVOKED"
    # Once the killed process is replaced, the pool has handled its exit in full: a
    # second report of the attempt (failed, worker lost) would have been made by now.
    wait_for(lambda: v("celery_worker_process_restarts_total") > restarts)
    wait_for(lambda: v("celery_task_finished_total", task="obs.sleeper", outcome="revoked") == 2)
    time.sleep(1)

    assert v("celery_task_started_total", task="obs.reject") == 1
    assert v("celery_task_finished_total", task="obs.reject", outcome="rejected") == 1
    assert v("celery_task_finished_total", task="obs.reject") == 1  # no other outcome
    assert v("celery_task_failures_total", task="obs.reject") == 0
    assert v("celery_task_duration_seconds_count", task="obs.reject") == 1
    assert v("celery_task_started_total", task="obs.sleeper") == 1  # the early one never ran
    assert v("celery_task_finished_total", task="obs.sleeper", outcome="revoked") == 2
    assert v("celery_task_finished_total", task="obs.sleeper") == 2
    assert v("celery_task_failures_total", task="obs.sleeper") == 0
    assert v("celery_task_in_progress", task="obs.sleeper") == 0  # the killed child's +1 is gone

    ours = {rejected.id, early.id, running.id}
    lines = [line for line in prefork.log_lines() if line.get("task_id") in ours]
    # The revoked TaskEvents (main process) reached the logging observer, once each.
    assert sorted(
        (line["task_id"], line["reason"]) for line in lines if line["event"] == "task revoked"
    ) == sorted([(early.id, "revoked"), (running.id, "terminated")])
    assert [line["task_id"] for line in lines if line["event"] == "task rejected"] == [rejected.id]
    assert not [line for line in lines if line["event"] in ("task failed", "task succeeded", "alert")]


def test_no_context_leaks_between_concurrent_tasks_on_the_threads_pool(redis_url: str) -> None:
    observed, queue = _start("threads", redis_url)
    try:
        ids = [uuid.uuid4().hex for _ in range(40)]
        results = [observed.app.tasks["obs.tagged"].apply_async((tag,), task_id=tag) for tag in ids]
        ctx = _publish_ctx_tasks(observed.app, 12)
        for result in results:
            result.get(timeout=TIMEOUT)
        for result in ctx.values():
            result.get(timeout=TIMEOUT, propagate=False)
        tagged = [line for line in observed.log_lines() if line.get("event") == "tagged line"]
        assert len(tagged) == 40
        assert all(line["task_id"] == line["tag"] for line in tagged)
        assert observed.value("celery_task_finished_total", task="obs.tagged", outcome="succeeded") == 40
        wait_for(lambda: _ctx_tasks_logged(observed, ctx))
        _assert_lines_carry_their_own_task_only(observed.log_lines(), ctx)
    finally:
        observed.worker.stop()
        with observed.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)


def test_a_taken_metrics_port_stops_the_worker_loudly(redis_url: str) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        prefix = f"kit-{RUN_ID}-obs-port"
        worker = WorkerProcess(
            "tests.integration.observed_app",
            queues=[f"{prefix}-q"],
            pool="solo",
            cwd=ROOT,
            env={
                "KIT_OBS_BROKER_URL": redis_url,
                "KIT_OBS_QUEUE": f"{prefix}-q",
                "KIT_OBS_METRICS_PORT": str(port),
                "KIT_OBS_STATE_URL": redis_url,
                "KIT_OBS_PREFIX": prefix,
                "PYTHONPATH": str(ROOT),
            },
        )
        with pytest.raises(Exception, match="cannot serve metrics") as caught:
            worker.start(timeout=30)
        worker.stop()
    assert f"127.0.0.1:{port}" in str(caught.value)


def _check_metrics(promtool: str, text: str) -> None:
    """``promtool check metrics``: the exposition parses and passes Prometheus' lint."""
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("pool", ["prefork", "solo", "threads"])
def test_a_fresh_worker_exports_every_task_at_zero_and_no_last_success(
    pool: str, redis_url: str, promtool: str
) -> None:
    """Before any task ran, every registered task's counters are exported at 0 (so that
    ``increase()`` sees the first hard timeout, invalid payload or final failure), and no
    task has a last-success sample (a 0 would read as "not since 1970")."""
    observed, queue = _start(pool, redis_url, "-fresh")
    try:
        replies = observed.app.control.inspect([observed.node], timeout=10).registered() or {}
        tasks = [name for name in replies[observed.node] if not name.startswith("celery.")]
        assert len(tasks) >= 10
        text = observed.scrape_text()
        _check_metrics(promtool, text)
        samples = observed.scrape()
        for task in tasks:
            tq = (("queue", queue), ("task", task))
            assert samples[("celery_task_started_total", tq)] == 0, task
            assert samples[("celery_task_in_progress", tq)] == 0, task
            assert samples[("celery_task_duration_seconds_count", tq)] == 0, task
            for outcome in ("succeeded", "failed", "retried", "rejected", "revoked", "ignored"):
                key = ("celery_task_finished_total", tuple(sorted((*tq, ("outcome", outcome)))))
                assert samples[key] == 0, (task, outcome)
            for kind in ("soft", "hard"):
                assert samples[("celery_task_timeouts_total", tuple(sorted((*tq, ("kind", kind)))))] == 0
            assert (
                samples[("celery_task_validation_errors_total", tuple(sorted((*tq, ("side", "worker")))))]
                == 0
            )
        for result in ("sent", "suppressed", "failed"):  # the default sink's deliveries
            assert samples[("celery_kit_alerts_total", (("result", result), ("sink", "log")))] == 0
        names = {name for name, _ in samples}
        assert "celery_task_last_success_timestamp_seconds" not in names
        assert "celery_task_failures_total" not in names  # its exception label is not known yet

        observed.app.tasks["obs.ok"].delay(1).get(timeout=TIMEOUT)
        last_success = "celery_task_last_success_timestamp_seconds"
        wait_for(lambda: observed.value(last_success, task="obs.ok") > 0)
        samples = observed.scrape()
        assert [dict(labels)["task"] for name, labels in samples if name == last_success] == ["obs.ok"]
        assert samples[(last_success, (("queue", queue), ("task", "obs.ok")))] > time.time() - 300
        assert observed.value("celery_task_started_total", task="obs.ok") == 1
        assert observed.value("celery_task_started_total") == 1  # the zeros are zeros everywhere
        _check_metrics(promtool, observed.scrape_text())
    finally:
        observed.worker.stop()
        with observed.app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
