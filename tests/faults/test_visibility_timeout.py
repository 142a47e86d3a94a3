"""Redis ``visibility_timeout`` against task runtime, under late acknowledgement.

Redis has no real acknowledgements: a message taken but not acknowledged is handed out
again once ``visibility_timeout`` has passed, so a task that runs longer than that runs
twice. ``presets.check`` warns about exactly that configuration; the ``reliable`` preset
computes a timeout that makes it impossible. Both halves are shown with a real worker.
"""

from __future__ import annotations

import time

import pytest

from celery_kit import presets
from celery_kit.presets import WarningCode

from .._support import wait_for
from .conftest import FaultRig, Report, record

pytestmark = pytest.mark.integration

RUNTIME = 4.0  # seconds the task runs
SHORT_VISIBILITY = 1.5  # below RUNTIME: the dangerous configuration
TIME_LIMIT = "8"


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_short_visibility_timeout_warns_and_really_runs_the_task_twice(
    rig: FaultRig, reliability_report: Report
) -> None:
    start = time.monotonic()
    env = {"KIT_FAULT_VISIBILITY": str(SHORT_VISIBILITY), "KIT_FAULT_TIME_LIMIT": TIME_LIMIT}
    app = rig.app(transport_options={"visibility_timeout": SHORT_VISIBILITY}, time_limit=float(TIME_LIMIT))
    codes = [warning.code for warning in presets.check(app.conf, log=False)]
    assert WarningCode.VISIBILITY_TIMEOUT in codes

    worker = rig.worker(concurrency=2, env=env)
    # The worker runs the same check at start and logs it.
    assert "visibility_timeout" in worker.log()
    task_id = app.tasks["faults.work"].delay(n=1, seconds=RUNTIME).id
    wait_for(lambda: rig.ledger.completed().get(task_id, 0) >= 1, timeout=30)
    time.sleep(1)
    _done, _executions, _lost, twice = record(
        reliability_report,
        rig,
        "visibility_timeout below the task runtime (acks_late)",
        [task_id],
        f"visibility_timeout {SHORT_VISIBILITY:g} s, task runs {RUNTIME:g} s; presets.check warned",
        start,
        "the duplicate the check warns about, reproduced: Redis handed the running task "
        "to the second process",
    )
    assert twice == {task_id}, "the task should have been handed out again while it ran"


@pytest.mark.parametrize("rig", ["redis"], indirect=True)
def test_the_reliable_presets_computed_timeout_runs_the_task_once(
    rig: FaultRig, reliability_report: Report
) -> None:
    start = time.monotonic()
    env = {"KIT_FAULT_VISIBILITY": "computed", "KIT_FAULT_TIME_LIMIT": TIME_LIMIT}
    app = rig.app(transport_options={}, time_limit=float(TIME_LIMIT))
    assert app.conf.broker_transport_options["visibility_timeout"] > float(TIME_LIMIT)
    assert WarningCode.VISIBILITY_TIMEOUT not in [w.code for w in presets.check(app.conf, log=False)]

    rig.worker(concurrency=2, env=env)  # the restore sweep still runs every second
    ids = [app.tasks["faults.work"].delay(n=i, seconds=RUNTIME).id for i in range(2)]
    rig.wait_completed(ids, timeout=30)
    time.sleep(SHORT_VISIBILITY + 1)  # as long as the first test needed to see a duplicate
    done, _executions, lost, twice = record(
        reliability_report,
        rig,
        "visibility_timeout computed by presets.reliable",
        ids,
        f"tasks run {RUNTIME:g} s with the restore sweep every 1 s",
        start,
    )
    assert (done, lost, twice) == (2, 0, set())
