"""Workers that die or are told to stop mid-load: every acknowledged task still completes.

Under ``presets.reliable`` (late acks, requeue on a lost worker, prefetch 1) the promise is
at-least-once: no task is lost, and a task runs twice only if it was in flight -- started,
or finished but not yet acknowledged -- on the process that the fault hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from .._support import wait_for
from .conftest import FaultRig, Report, record, scale

pytestmark = pytest.mark.integration

CONCURRENCY = 2
#: What a prefork worker holds unacknowledged at most under the preset: one message per
#: process (``worker_prefetch_multiplier=1``), running or reserved.
UNACKED_PER_WORKER = CONCURRENCY
#: Redis: kombu's transport takes a message with BRPOP and records it as unacknowledged
#: in a second command; a message popped by the worker's main process in between is gone
#: with it. The consumer pops one message at a time: at most one per kill (issue 15).
REDIS_POP_WINDOW = 1
VISIBILITY = 8.0


def _redis_restore_env(rig: FaultRig) -> dict[str, str]:
    """On Redis a dead worker's messages come back after ``visibility_timeout``: make it 8 s."""
    return {"KIT_FAULT_VISIBILITY": f"{VISIBILITY:g}"} if rig.broker == "redis" else {}


def _wait_settled(rig: FaultRig, ids: list[str], allowed: int, restored_by: float) -> None:
    """Wait for ``ids`` to complete, all but ``allowed`` of them once the dead worker's
    messages can no longer come back (``restored_by``, a monotonic time)."""
    if not allowed:
        rig.wait_completed(ids, timeout=120)
        return

    def missing() -> int:
        return len(set(ids) - set(rig.ledger.completed()))

    wait_for(lambda: missing() <= allowed, timeout=120)
    if missing():  # lost, or not restored yet: wait until nothing more can come back
        time.sleep(max(0.0, restored_by - time.monotonic()))
        with contextlib.suppress(AssertionError):  # what is still missing is counted as lost
            wait_for(lambda: missing() == 0, timeout=10)


def test_kill9_of_pool_children_mid_task_requeues_only_those_tasks(
    rig: FaultRig, reliability_report: Report
) -> None:
    start = time.monotonic()
    work = rig.app().tasks["faults.work"]
    worker = rig.worker(concurrency=CONCURRENCY)
    total = scale(60, 600)
    ids = [work.delay(n=i, seconds=0.3).id for i in range(total)]

    kills = 3
    in_flight_at_kills: set[str] = set()
    killed_tasks: set[str] = set()

    chosen: list[tuple[str, int]] = []

    def victim_found() -> bool:
        """A task that started in a live pool child less than 0.1 s ago (so it is still
        running when the kill lands), and not one killed before."""
        children = set(worker.pool_pids())
        now = time.time()
        for task_id, (pid, started) in rig.ledger.running().items():
            if pid in children and now - started < 0.1 and task_id not in killed_tasks:
                chosen[:] = [(task_id, pid)]
                return True
        return False

    for _ in range(kills):
        wait_for(victim_found, timeout=30)
        task_id, pid = chosen[0]
        os.kill(pid, signal.SIGKILL)
        killed_tasks.add(task_id)
        in_flight_at_kills |= set(rig.ledger.started()) - set(rig.ledger.completed())
        time.sleep(1.0)  # let the pool replace the child before the next kill

    rig.wait_completed(ids, timeout=120)
    _done, _executions, lost, twice = record(
        reliability_report,
        rig,
        "kill -9 of a pool child mid-task",
        ids,
        f"{kills} x SIGKILL of the child running a task",
        start,
        "each killed task was requeued (task_reject_on_worker_lost) and ran again to completion",
    )
    assert lost == 0
    # The killed tasks were requeued and ran again; nothing else ran twice.
    assert len(killed_tasks) == kills
    assert killed_tasks <= twice, f"killed tasks not re-run: {killed_tasks - twice}"
    assert twice <= in_flight_at_kills
    assert len(twice) <= kills * UNACKED_PER_WORKER
    assert all(rig.ledger.completed()[tid] == 1 for tid in ids)


def test_kill9_of_the_whole_worker_mid_load_loses_nothing_but_the_redis_pop_window(
    rig: FaultRig, reliability_report: Report
) -> None:
    start = time.monotonic()
    work = rig.app().tasks["faults.work"]
    first = rig.worker(concurrency=CONCURRENCY, env=_redis_restore_env(rig))
    total = scale(80, 1000)
    ids = [work.delay(n=i, seconds=0.15).id for i in range(total)]

    wait_for(lambda: rig.ledger.completed_count() >= total // 4, timeout=60)
    first.kill_all()  # main process and pool children: the node vanished (OOM kill, power loss)
    # Read after the kill: no worker runs until the next one starts, so this is exactly what
    # had started before it (a read just before the kill would miss a task starting in between).
    started_before_kill = set(rig.ledger.started())
    completed_at_kill = rig.ledger.completed_count()
    assert completed_at_kill < total, "the worker finished before the kill; the test proves nothing"

    killed_at = time.monotonic()
    rig.worker(concurrency=CONCURRENCY, env=_redis_restore_env(rig))
    allowed = REDIS_POP_WINDOW if rig.broker == "redis" else 0
    # Restored after the visibility timeout by the next once-a-second sweep, then run.
    _wait_settled(rig, ids, allowed, restored_by=killed_at + VISIBILITY + 10)
    _done, _executions, lost, twice = record(
        reliability_report,
        rig,
        "kill -9 of the worker (main + children) mid-load",
        ids,
        f"1 x SIGKILL of every worker process after {completed_at_kill} tasks; a new worker started",
        start,
        (
            "messages the dead worker held came back after visibility_timeout (8 s in the test); "
            "a message the main process had popped (BRPOP) but not yet recorded as unacknowledged "
            "(a second command) is lost with it: at most 1 per kill, never a started task, "
            "seen in 2 of 8 runs of 2,000 tasks (issue 15); RabbitMQ (quorum queues) loses none"
            if rig.broker == "redis"
            else "RabbitMQ requeued the dead connection's unacknowledged messages at once"
        ),
    )
    assert lost <= allowed
    lost_ids = set(ids) - set(rig.ledger.completed())
    assert not lost_ids & started_before_kill, "a started task was lost: only a just-popped one may be"
    # Only what the dead worker held unacknowledged (running, or finished but not yet
    # acknowledged) may run again.
    assert twice <= started_before_kill
    assert len(twice) <= UNACKED_PER_WORKER


def test_warm_shutdown_mid_load_finishes_or_returns_every_task(
    rig: FaultRig, reliability_report: Report
) -> None:
    start = time.monotonic()
    work = rig.app().tasks["faults.work"]
    first = rig.worker(concurrency=CONCURRENCY)
    total = scale(40, 400)
    ids = [work.delay(n=i, seconds=0.3).id for i in range(total)]

    wait_for(lambda: rig.ledger.completed_count() >= 6, timeout=60)
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)  # warm shutdown: finish what runs, take nothing new
    assert first.process.wait(60) == 0, first.log()[-3000:]
    in_flight = set(rig.ledger.started()) - set(rig.ledger.completed())
    completed_at_stop = rig.ledger.completed_count()
    assert not in_flight, f"warm shutdown left tasks unfinished: {in_flight}"
    assert completed_at_stop < total, "the worker finished before the shutdown; the test proves nothing"

    rig.worker(concurrency=CONCURRENCY)
    rig.wait_completed(ids, timeout=120)
    _done, _executions, lost, twice = record(
        reliability_report,
        rig,
        "warm shutdown (SIGTERM) mid-load",
        ids,
        f"SIGTERM after {completed_at_stop} tasks; a new worker started",
        start,
    )
    assert lost == 0
    assert twice == set(), "a warm shutdown must not run any task twice"
