"""The benchmark harness compares like with like: each variant under its worker's logging,
events on where they should be, and a worker's CPU counted in all of its processes."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from benchmarks.bench_app import EVENTS, ProcessLogging, build, call
from benchmarks.cpu import sample
from celery import Celery

from celery_kit.testing import WorkerProcess

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"to": "ada@example.com", "subject": "Hello", "body": "Hi Ada."}
PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in PER_TASK_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restored_logging")
def test_each_variant_runs_under_the_logging_its_worker_has() -> None:
    sink = io.StringIO()
    environments = ProcessLogging(sink)
    plain = build("plain", "memory://", "bench-test", None, "").tasks["bench.send"]
    full = build("kit_full", "memory://", "bench-test", None, "").tasks["bench.send"]

    environments.use("plain")
    plain.apply((), SMALL)
    written = sink.getvalue()
    assert "Task bench.send[" in written
    assert "succeeded in" in written  # Celery's own per-task line, as `celery worker -l INFO` writes it

    sink.seek(0)
    sink.truncate()
    environments.use("kit_full")
    full.apply((SMALL,))
    events = [json.loads(line)["event"] for line in sink.getvalue().splitlines()]
    assert events == ["task started", "task succeeded"]  # the kit's lines replace Celery's

    for variant, task, args in (("plain", plain, ((), SMALL)), ("kit_full", full, ((SMALL,), {}))):
        sink.seek(0)
        sink.truncate()
        environments.use(variant, logging.WARNING)
        task.apply(*args)
        assert sink.getvalue() == "", f"{variant} logged per task at WARNING"


def _run_variant(*arguments: str) -> subprocess.CompletedProcess[str]:
    return _run_benchmark("benchmarks.variant_process", *arguments)


def _run_benchmark(module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("variant", ["plain", "plain_events", "kit_full", "kit+metrics", "kit_full+unique"])
def test_a_variant_process_runs_once_on_request(variant: str) -> None:
    for run in ("apply", "publish"):
        done = _run_variant(variant, "--run", run, "--calls", "5")
        assert done.returncode == 0, done.stderr


def test_the_pool_path_runs_each_variant_under_its_workers_logging() -> None:
    """benchmarks/pool_path.py: a row per variant, measured only if the variant wrote its
    per-task line (the kit's JSON line, or Celery's own) through the worker's logging."""
    done = _run_benchmark(
        "benchmarks.pool_path", "plain", "kit+metrics", "kit_full", "--tasks", "20", "--rounds", "1"
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in done.stdout.splitlines()[2:]}
    assert set(rows) == {"plain", "kit+metrics", "kit_full"}, done.stdout
    assert all(value > 0 for value in rows.values()), done.stdout


def test_an_unknown_instrument_part_is_refused() -> None:
    done = _run_variant("kit+tracing", "--run", "apply", "--calls", "1")
    assert done.returncode != 0
    assert "unknown part 'tracing'" in done.stderr


def test_the_variant_process_answers_commands_over_its_pipe() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.variant_process", "kit"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        commands = [
            {"op": "apply", "n": 3, "heavy": False, "direct": False, "level": "INFO"},
            {"op": "apply", "n": 3, "heavy": True, "direct": True, "level": "WARNING"},
            {"op": "no_such_op"},
        ]
        answers = []
        for command in commands:
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
            answers.append(json.loads(process.stdout.readline()))
        assert answers[0]["value"] > 0
        assert answers[1]["value"] > 0
        assert "no_such_op" in answers[2]["error"]  # an error is answered, not fatal
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind counts the instructions")
def test_instruction_counts_are_per_call_and_deterministic() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks.instructions import per_call

    with ThreadPoolExecutor(max_workers=2) as pool:
        first = per_call("plain", "apply", "WARNING", 20, pool)
        second = per_call("plain", "apply", "WARNING", 40, pool)
    # Celery's apply() runs some hundred thousand instructions, the same every call.
    assert 100_000 < first < 5_000_000
    assert abs(first - second) / first < 0.05


# -- worker CPU per task ------------------------------------------------------------------------

#: A task that burns ``seconds`` of CPU in the pool process that runs it, then leaves a mark.
BURN_APP = """
import os, pathlib, time
from celery import Celery

app = Celery("burn", broker=os.environ["BURN_BROKER"], set_as_current=False)
app.conf.update(
    task_default_queue=os.environ["BURN_QUEUE"],
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

@app.task(name="burn")
def burn(seconds, mark):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    pathlib.Path(mark).touch()
"""


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("max_tasks_per_child", [None, 1], ids=["pool-kept", "pool-replaced"])
def test_the_cpu_sample_counts_the_pool_of_a_real_prefork_worker(
    tmp_path: Path, redis_url: str, unique: str, max_tasks_per_child: int | None
) -> None:
    """The CPU a task burns in a pool process is in the sample, whether the process is still
    alive (its own time) or was replaced and reaped (its parent's reaped time)."""
    (tmp_path / "burn_app.py").write_text(textwrap.dedent(BURN_APP))
    queue = f"bench-burn-{unique}"
    extra = [] if max_tasks_per_child is None else [f"--max-tasks-per-child={max_tasks_per_child}"]
    app = Celery("burn-producer", broker=redis_url, set_as_current=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    tasks, seconds = 4, 0.3
    with WorkerProcess(
        "burn_app",
        queues=[queue],
        concurrency=2,
        cwd=tmp_path,
        env={"BURN_BROKER": redis_url, "BURN_QUEUE": queue, "PYTHONPATH": str(tmp_path)},
        extra_args=extra,
    ) as worker:
        time.sleep(0.5)
        before = sample(worker.pid)
        assert len(before.child_pids) == 2  # the pool: two live children of the main process
        for i in range(tasks):
            app.send_task("burn", (seconds, str(marks / str(i))), queue=queue)
        _wait_for(lambda: len(list(marks.iterdir())) == tasks, 60, "the burn tasks")
        time.sleep(1.0)  # a replaced child exits and is reaped
        spent = sample(worker.pid) - before
    burned = tasks * seconds
    # The kernel's accounting is in clock ticks (10 ms): a little slack, none for a miss.
    assert spent.total >= 0.9 * burned, spent
    assert spent.total < burned + 1.5, spent  # not counted twice
    if max_tasks_per_child is None:
        assert spent.child_pids == before.child_pids
        assert spent.children >= 0.9 * burned, spent  # in the live pool processes' own time
        assert spent.main < 0.5 * burned, spent
    else:
        assert not spent.child_pids & before.child_pids, "the pool was not replaced"
        assert spent.main >= 0.9 * burned, spent  # reaped: in the main process's children time


def test_a_cpu_sample_reads_every_process_of_a_tree(tmp_path: Path) -> None:
    """A parent and a child that burns a known amount of CPU and stays alive."""
    mark = tmp_path / "burned"
    child = (
        "import pathlib, sys, time\n"
        "time.sleep(0.5)\n"
        "end = time.process_time() + 0.5\n"
        "while time.process_time() < end: pass\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
    )
    script = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, {str(mark)!r}])"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(lambda: sample(parent.pid).child_pids, 10, "the child")
        before = sample(parent.pid)
        _wait_for(mark.exists, 30, "the child's burn")
        spent = sample(parent.pid) - before
        assert len(spent.child_pids) == 1
        assert spent.children >= 0.45, spent  # the live child's own time
        assert spent.main < 0.2, spent
    finally:
        for pid in sample(parent.pid).child_pids:
            os.kill(pid, 9)
        parent.wait(timeout=10)


# -- plain_events: Celery's task events on ------------------------------------------------------


class EventLog:
    """Every event a Celery event receiver (what Flower runs) sees. Other workers on the same
    broker send theirs too: read them by task id."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self.events.append})
        self._thread = threading.Thread(
            target=self._receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True
        )

    def __enter__(self) -> EventLog:
        self._thread.start()
        time.sleep(1.0)  # subscribed before anything is published
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._connection.release()


@pytest.mark.integration
@pytest.mark.parametrize("variant", ["plain", EVENTS])
def test_only_plain_events_sends_the_task_events_a_receiver_needs(
    variant: str, redis_url: str, redis_client: redis.Redis, unique: str
) -> None:
    from benchmarks.run import worker

    queue, key, n = f"bench-events-{unique}", f"bench:done:{unique}", 3
    producer = build(variant, redis_url, queue, None, "")
    name, args, kwargs = call(variant, heavy=False)
    with EventLog(producer) as events:
        process = worker(variant, redis_url, queue, key, counter_url=redis_url)
        with process:
            ids = {producer.tasks[name].apply_async(args, kwargs).id for _ in range(n)}
            _wait_for(lambda: int(redis_client.get(key) or 0) == n, 60, "the tasks")
            time.sleep(1.0)  # the last events arrive
    task_events = [e["type"] for e in events.events if e.get("uuid") in ids]
    if variant == "plain":
        assert task_events == []  # the control: without -E nothing is sent
    else:
        for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
            assert task_events.count(kind) == n, (kind, task_events)


# -- targets ------------------------------------------------------------------------------------


def _row(**samples: list[float]) -> dict[str, Any]:
    from benchmarks.run import summary

    return summary(samples)


def _results() -> dict[str, Any]:
    """Recorded results as run.py writes them, with chosen per-round numbers."""
    cpu = {
        "plain": [1000.0, 1000.0, 1000.0, 1000.0, 1000.0],
        EVENTS: [1300.0, 1300.0, 1200.0, 1300.0, 1300.0],
        "pydantic": [1100.0, 1100.0, 1100.0, 1100.0, 1100.0],
        "kit": [1050.0, 1050.0, 1050.0, 1050.0, 1050.0],
        "kit_full": [1040.0, 1100.0, 1030.0, 1020.0, 1060.0],  # 1.04 per round: met
    }
    throughput = {v: [500.0] * 5 for v in cpu} | {"kit_full": [480.0, 470.0, 490.0, 480.0, 500.0]}
    e2e = _row(**throughput) | {"rss_kib": {v: {"main_kib": 60_000, "children_kib": 100_000} for v in cpu}}
    split = {v: {"main": s[0] / 2, "pool": s[0] / 2} for v, s in cpu.items()}
    return {
        "machine": {
            "date": "2026-12-01 00:00 UTC",
            "python": "3.11",
            "celery": "5.7",
            "pydantic": "2",
            "cpus": 2,
            "platform": "Linux",
        },
        "quick": False,
        "apply_small": _row(plain=[100.0] * 3, pydantic=[120.0] * 3, kit=[110.0] * 3, kit_full=[130.0] * 3),
        "e2e_redis": e2e,
        "e2e_redis_cpu": _row(**cpu) | {"split": split},
    }


def test_the_targets_are_issue_16s_end_to_end_targets() -> None:
    from benchmarks.run import check_targets, targets_table

    results = _results()
    text = targets_table(results)
    # Throughput and CPU per task end to end, each with the middle half of its rounds.
    assert "| e2e_redis | kit_full / plain | >= 0.97 | 0.960 | 0.95-0.99 | missed |" in text
    assert "| e2e_redis_cpu | kit_full / plain | <= 1.05 | 1.040 | 1.02-1.08 | met |" in text
    assert "| e2e_redis_cpu | kit_full / plain_events | <= 0.95 | 0.815 | 0.79-0.85 | met |" in text
    assert "| e2e_redis_cpu | kit / pydantic | < 1.00 | 0.955 | 0.95-0.95 | met |" in text
    assert "| apply_small | kit / pydantic | < 1.00 | 0.917 | 0.92-0.92 (all) | met |" in text
    # The cost of -E and kit_full's throughput beside it: reported, not judged.
    assert "| e2e_redis | plain_events / plain | (reported) | 1.000 | 1.00-1.00 |  |" in text
    assert "| e2e_redis | kit_full / plain_events | (reported) | 0.960 |" in text
    # The in-process target against plain Celery is retired: apply() rows are information.
    assert [(t["variant"], t["baseline"]) for t in check_targets("apply_small", results["apply_small"])] == [
        ("kit", "pydantic")
    ]


def test_a_target_is_judged_on_the_rounds_not_on_the_medians() -> None:
    """Per-round ratios, as the rows were measured side by side: a slow round of one
    variant beside a slow round of the other is no miss."""
    from benchmarks.run import check_targets

    row = _row(plain=[1000.0, 2000.0, 1000.0], kit_full=[1040.0, 2080.0, 1040.0])
    (met,) = [t for t in check_targets("e2e_rabbitmq_cpu", row) if t["baseline"] == "plain"]
    assert met["value"] == pytest.approx(1.04)
    assert met["met"]
    row = _row(plain=[1000.0, 1000.0, 1000.0], kit_full=[1100.0, 1060.0, 1000.0])
    (missed,) = [t for t in check_targets("e2e_rabbitmq_cpu", row) if t["baseline"] == "plain"]
    assert missed["met"] is False
    assert missed["spread"] == [pytest.approx(1.0), pytest.approx(1.1)]


def test_from_results_writes_the_page_without_measuring(tmp_path: Path) -> None:
    recorded = tmp_path / "results.json"
    recorded.write_text(json.dumps(_results()))
    page = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--from-results", str(recorded), "--docs", str(page)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    assert "| e2e_redis_cpu | CPU µs/task | 1,000.0 | 1,300.0 | 1,100.0 | 1,050.0 | 1,040.0 |" in text
    assert "| e2e_redis_cpu | kit_full / plain_events | <= 0.95 |" in text
    assert "| e2e_redis_cpu | kit_full | 520.0 | 520.0 | 1,040.0 |" in text  # main and pool


def test_from_results_reads_a_results_file_of_the_old_harness(tmp_path: Path) -> None:
    """A file without CPU rows or plain_events (before issue 16) still renders."""
    old = _results()
    del old["e2e_redis_cpu"]
    for row in (old["apply_small"], old["e2e_redis"]):
        for key in ("median", "ratio", "samples"):
            row[key].pop(EVENTS, None)
    recorded = tmp_path / "old.json"
    recorded.write_text(json.dumps(old))
    done = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--from-results", str(recorded)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| e2e_redis | kit_full / plain | >= 0.97 |" in done.stdout
