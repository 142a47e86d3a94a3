"""A worker whose pool cannot enforce time limits says so at start, naming the tasks."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_kit import validated_task

pytestmark = pytest.mark.integration


class _Collect(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize(("pool", "warned"), [("solo", True), ("threads", True), ("prefork", False)])
def test_pool_without_time_limits_warns(app: Celery, pool: str, warned: bool) -> None:
    @validated_task(app, shared=False, name="t.limited", soft_time_limit=1, time_limit=2)
    def limited() -> None: ...

    # The worker reconfigures the root logger (and caplog's handler with it): listen on ours.
    handler = _Collect(logging.WARNING)
    records = handler.records
    logger = logging.getLogger("celery_kit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # the embedded worker sets the root logger to ERROR
    try:
        with start_worker(app, pool=pool, concurrency=1, perform_ping_check=False, shutdown_timeout=10):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [r.getMessage() for r in records]
    matching = [m for m in messages if "does not enforce" in m and "t.limited" in m]
    assert len(matching) == (1 if warned else 0), messages
