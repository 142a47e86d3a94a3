"""The benchmark harness compares like with like: each variant under its worker's logging."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from benchmarks.bench_app import ProcessLogging, build

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
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.variant_process", *arguments],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("variant", ["plain", "kit_full", "kit+metrics", "kit_full+unique"])
def test_a_variant_process_runs_once_on_request(variant: str) -> None:
    for run in ("apply", "publish"):
        done = _run_variant(variant, "--run", run, "--calls", "5")
        assert done.returncode == 0, done.stderr


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
