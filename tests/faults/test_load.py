"""Load without faults: every task completes exactly once, and the metrics agree.

Two prefork workers share one Redis queue. The ledger counts completions per task id; the
workers' own ``/metrics`` endpoints (multiprocess mode, summed across pool processes) must
report the same number, so a metric that drops or double-counts under load shows up here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from celery_kit.testing import read_metric

from .._support import free_port
from .conftest import FaultRig, Report, elapsed, record, scale

pytestmark = pytest.mark.integration


def test_tasks_through_redis_with_two_workers_complete_exactly_once(
    redis_url: str, rig_factory: Callable[[str, str], FaultRig], reliability_report: Report
) -> None:
    start = time.monotonic()
    rig = rig_factory("redis", redis_url)
    ports = [free_port(), free_port()]
    for port in ports:
        rig.worker(concurrency=2, env={"KIT_FAULT_METRICS_PORT": str(port)})
    work = rig.app().tasks["faults.work"]
    total = scale(20_000, 100_000)
    ids = [work.delay(n=i).id for i in range(total)]

    rig.wait_completed(ids, timeout=300)

    def metric(name: str, **labels: str) -> float:
        return sum(read_metric(name, {"task": "faults.work", **labels}, port=port) for port in ports)

    started, succeeded = (
        metric("celery_task_started_total"),
        metric("celery_task_finished_total", outcome="succeeded"),
    )
    per_worker = [
        read_metric("celery_task_started_total", {"task": "faults.work"}, port=port) for port in ports
    ]
    done, executions, lost, twice = record(
        reliability_report,
        rig,
        "load, no faults",
        ids,
        "none (2 workers x 2 processes)",
        start,
        f"metrics: started {started:.0f}, succeeded {succeeded:.0f} "
        f"(per worker {', '.join(f'{n:.0f}' for n in per_worker)}); "
        f"{total / elapsed(start):.0f} tasks/s publish to last completion",
    )
    assert (done, lost, twice) == (total, 0, set())
    assert executions == total
    assert started == succeeded == total
    assert all(n > 0 for n in per_worker), "both workers should have taken a share"
