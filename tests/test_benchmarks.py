"""The benchmark harness compares like with like: each variant under its worker's logging."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from benchmarks.bench_app import ProcessLogging, build

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
