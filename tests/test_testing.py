"""celery_kit.testing's pytest plugin, used the way a service's test suite would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery

from celery_kit import PayloadValidationError, instrument, validated_task
from celery_kit.alerts import Alerting, WebhookSink
from celery_kit.testing import AlertReceiver, WorkerProcess, WorkerStartError

from ._support import wait_for
from .integration.worker_app import build_app

pytestmark = pytest.mark.integration


def test_real_worker_round_trip_and_raw_messages(
    celery_kit_worker: Callable[..., WorkerProcess],
    celery_kit_broker_url: str,
    celery_kit_queue: str,
    publish_raw: Callable[..., Any],
    redis_url: str,
) -> None:
    prefix = celery_kit_queue
    app = build_app(celery_kit_broker_url, redis_url, celery_kit_queue, redis_url, prefix)
    worker = celery_kit_worker(
        "tests.integration.worker_app",
        queues=[celery_kit_queue],
        env={
            "KIT_TEST_BROKER_URL": celery_kit_broker_url,
            "KIT_TEST_BACKEND_URL": redis_url,
            "KIT_TEST_QUEUE": celery_kit_queue,
            "KIT_TEST_STATE_URL": redis_url,
            "KIT_TEST_PREFIX": prefix,
        },
    )
    assert worker.process is not None
    assert worker.process.poll() is None
    assert app.tasks["kit.receipt"].delay(order_id=1, items=["a"]).get(timeout=30) == {
        "order_id": 1,
        "count": 1,
    }
    bad = publish_raw(app, "kit.receipt", args=[{"order_id": "x"}])
    with pytest.raises(PayloadValidationError):
        bad.get(timeout=30)
    state = redis.Redis.from_url(redis_url)
    for key in state.scan_iter(f"{prefix}:*"):
        state.delete(key)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(celery_kit_queue)


def test_captured_alerts_and_metrics_sample(
    app: Celery, captured_alerts: AlertReceiver, metrics_sample: Callable[..., float]
) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    instrument(
        app,
        logging=False,
        metrics_registry=registry,
        alerts=Alerting(sinks=[WebhookSink(captured_alerts.url)], window=60),
    )

    @validated_task(app, shared=False, name="tt.boom")
    def boom() -> None:
        raise ValueError("boom")

    boom.apply()
    (alert,) = captured_alerts.wait_for(lambda alerts: len(alerts) == 1, timeout=10)
    assert (alert.task_name, alert.kind.value, alert.exception_type) == (
        "tt.boom",
        "final_failure",
        "ValueError",
    )
    assert (
        metrics_sample(
            "celery_task_finished_total", {"task": "tt.boom", "outcome": "failed"}, registry=registry
        )
        == 1
    )
    # The receiver answers before the delivery thread records the result: wait for the count.
    wait_for(
        lambda: (
            metrics_sample(
                "celery_kit_alerts_total", {"sink": "webhook", "result": "sent"}, registry=registry
            )
            == 1
        ),
        timeout=10,
    )


def test_an_unreachable_broker_fails_the_test_instead_of_skipping(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["celery_kit.testing"]')
    pytester.makepyfile("def test_needs_broker(celery_kit_broker_url):\n    pass\n")
    result = pytester.runpytest("--celery-kit-broker=redis://127.0.0.1:1/0", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*no broker reachable for celery_kit tests*"])


def test_celerys_classic_fixtures_still_work_beside_the_plugin(pytester: pytest.Pytester) -> None:
    """pytest-celery replaces ``celery_worker`` with a Docker one; the kit adds its own fixture
    names and leaves Celery's classic in-process session worker usable for kit tasks."""
    pytester.makeconftest(
        'import pytest\npytest_plugins = ["celery_kit.testing"]\n\n'
        '@pytest.fixture(scope="session")\n'
        "def celery_config():\n"
        '    return {"broker_url": "memory://", "result_backend": "cache+memory://"}\n'
    )
    pytester.makepyfile(
        "import pytest\n"
        "from pydantic import ValidationError\n"
        "from celery_kit import validated_task\n\n"
        '@validated_task(name="classic.add", soft_time_limit=5, time_limit=10)\n'
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n\n"
        "def test_classic(celery_session_app, celery_session_worker):\n"
        '    assert celery_session_app.tasks["classic.add"].delay(2, "3").get(timeout=10) == 5\n'
        "    with pytest.raises(ValidationError):\n"
        '        celery_session_app.tasks["classic.add"].delay(2, "three")\n'
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_worker_process_as_a_context_manager_removes_its_log(
    celery_kit_broker_url: str, celery_kit_queue: str, redis_url: str, pytestconfig: pytest.Config
) -> None:
    env = {
        "KIT_TEST_BROKER_URL": celery_kit_broker_url,
        "KIT_TEST_BACKEND_URL": redis_url,
        "KIT_TEST_QUEUE": celery_kit_queue,
        "KIT_TEST_STATE_URL": redis_url,
        "KIT_TEST_PREFIX": celery_kit_queue,
        "PYTHONPATH": str(pytestconfig.rootpath),
    }
    root = pytestconfig.rootpath
    worker = WorkerProcess(
        "tests.integration.worker_app", queues=[celery_kit_queue], pool="solo", cwd=root, env=env
    )
    try:
        with worker:
            assert " ready." in worker.log()
            assert worker.log_path.exists()
        assert worker.process is not None
        assert worker.process.returncode is not None  # stopped
        assert not worker.log_path.exists()
    finally:
        app = build_app(celery_kit_broker_url, redis_url, celery_kit_queue, redis_url, celery_kit_queue)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(celery_kit_queue)

    broken = WorkerProcess("tests.no_such_module", pool="solo", cwd=root, env=env)
    with pytest.raises(WorkerStartError), broken:
        pass
    assert not broken.log_path.exists()
