"""Multiprocess metrics: exact sums across processes, robust to processes dying mid-scrape.

Runs in a fresh interpreter: switching prometheus-client to multiprocess values is
process-wide, as it is in a worker's main process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys, threading
    from celery_kit.metrics import TaskMetrics
    from celery_kit._metrics_worker import MetricsSetup, prepare_multiprocess_dir

    base = sys.argv[1]
    setup = MetricsSetup(None, port=0, host="127.0.0.1", prefix="mp", registry=None,
                         duration_buckets=(1.0,), queue_wait_buckets=(1.0,), multiprocess_dir=base)
    setup.multiprocess_path = prepare_multiprocess_dir("node@test", base)
    metrics = TaskMetrics(None, prefix="mp")

    def child(n, clean):
        for _ in range(n):
            metrics.started.labels("t", "q").inc()
        metrics.in_progress.labels("t", "q").inc()  # dies "mid-task"
        if clean:
            from prometheus_client.multiprocess import mark_process_dead
            mark_process_dead(os.getpid(), setup.multiprocess_path)
        os._exit(0)

    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=child, args=(i + 1, i % 2 == 0)) for i in range(12)]
    errors = []
    def scrape():
        registry = setup.exposition_registry()
        for _ in range(40):
            try:
                list(registry.collect())
            except Exception as exc:
                errors.append(repr(exc))
    for p in procs:
        p.start()
    scrapers = [threading.Thread(target=scrape) for _ in range(4)]
    for t in scrapers:
        t.start()
    for p in procs:
        p.join()
    for t in scrapers:
        t.join()
    registry = setup.exposition_registry()
    samples = [s for m in registry.collect() for s in m.samples]
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    started = values[("mp_task_started_total", (("queue", "q"), ("task", "t")))]
    in_progress = sum(v for (name, _), v in values.items() if name == "mp_task_in_progress")
    print(*errors[:3], sep=" | ", file=sys.stderr)
    print(f"errors={len(errors)} started={started:g} in_progress={in_progress:g}")
    """
)


def test_sums_are_exact_and_dead_processes_vanish_from_live_gauges(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # 1 + 2 + ... + 12 increments from 12 processes; every process is dead by now.
    assert done.stdout.strip().splitlines()[-1] == "errors=0 started=78 in_progress=0", done.stderr


LAST_SUCCESS_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from celery_kit.metrics import TaskMetrics
    from celery_kit._metrics_worker import MetricsSetup, prepare_multiprocess_dir

    base = sys.argv[1]
    setup = MetricsSetup(None, port=0, host="127.0.0.1", prefix="ls", registry=None,
                         duration_buckets=(1.0,), queue_wait_buckets=(1.0,), multiprocess_dir=base)
    setup.multiprocess_path = prepare_multiprocess_dir("node@test", base)
    metrics = TaskMetrics(None, prefix="ls")

    def child(value):
        gauge = metrics.last_success.labels("t", "q")  # its file holds 0 until set
        if value:
            gauge.set(value)
        os._exit(0)

    def samples():
        return sorted(
            (s.labels["task"], s.value)
            for m in setup.exposition_registry().collect()
            for s in m.samples
            if s.name == "ls_task_last_success_timestamp_seconds"
        )

    fork = multiprocessing.get_context("fork")
    p = fork.Process(target=child, args=(0,)); p.start(); p.join()
    print("unset", samples())
    p = fork.Process(target=child, args=(1.8e9,)); p.start(); p.join()
    print("set", samples())
    """
)


def test_a_last_success_series_created_but_not_yet_set_is_not_exported_as_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LAST_SUCCESS_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["unset []", "set [('t', 1800000000.0)]"], done.stderr
