"""A user's own Observer on a real prefork worker: task and process hooks, each once."""

from __future__ import annotations

import pytest
import redis

from celery_kit.testing import WorkerProcess

from ..conftest import RUN_ID
from .conftest import ROOT, wait_until
from .user_observer_app import build_app

pytestmark = pytest.mark.integration


def test_a_users_observer_on_a_prefork_worker(redis_url: str, unique: str) -> None:
    prefix = f"obs-{RUN_ID}-{unique}"
    queue = f"{prefix}-q"
    app = build_app(redis_url, redis_url, queue, prefix)
    state = redis.Redis.from_url(redis_url)
    ledger_key = f"{prefix}:ledger"

    def raw() -> list[str]:
        return [e.decode() if isinstance(e, bytes) else str(e) for e in state.lrange(ledger_key, 0, -1)]

    def entries() -> list[str]:
        return [e.split("@")[0] for e in raw()]

    worker = WorkerProcess(
        "tests.integration.user_observer_app",
        queues=[queue],
        pool="prefork",
        concurrency=2,
        cwd=ROOT,
        env={
            "KIT_TEST_BROKER_URL": redis_url,
            "KIT_TEST_STATE_URL": redis_url,
            "KIT_TEST_QUEUE": queue,
            "KIT_TEST_PREFIX": prefix,
            "PYTHONPATH": str(ROOT),
        },
    )
    try:
        with worker:
            ok = app.tasks["obs.double"].delay(21)
            bad = app.tasks["obs.double"].delay(-1)
            wait_until(lambda: f"succeeded:{ok.id}" in entries() and any(bad.id in e for e in entries()))
        wait_until(lambda: entries().count("process_shutdown") == 2 and "worker_shutdown" in entries())
        seen = entries()
        assert seen.count("worker_init") == 1
        assert seen.count("worker_ready:True") == 1  # the worker, not its consumer
        assert seen.count("worker_shutdown") == 1
        assert seen.index("worker_init") < seen.index("worker_ready:True")
        assert seen.count("process_init") == 2  # one per pool process, before its first task
        assert seen.count(f"succeeded:{ok.id}") == 1
        assert seen.count(f"failed:{bad.id}:permanent:True") == 1
        # Task hooks ran in pool processes, worker_init in the main process.
        pids = {e.split("@")[1] for e in raw() if "init" in e}
        assert len(pids) == 3
        main = {
            e.split("@")[1] for e in raw() if e.startswith(("worker_init", "worker_ready", "worker_shutdown"))
        }
        assert len(main) == 1
    finally:
        state.delete(ledger_key)
