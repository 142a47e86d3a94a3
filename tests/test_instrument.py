"""instrument(app): idempotent wiring, and the config check at worker start."""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_kit import ConfigurationError, dispatcher_for, instrument


def test_instrument_is_idempotent(app: Celery) -> None:
    first = instrument(app, logging=False, metrics=False)
    observers = dispatcher_for(app).observers
    assert instrument(app, logging=False, metrics=False) is first
    assert dispatcher_for(app).observers == observers


def test_instrument_again_with_other_options_is_refused(app: Celery) -> None:
    instrument(app, logging=False, metrics=False, alerts=None)
    with pytest.raises(ConfigurationError, match=r"already instrumented, with other logging, metrics"):
        instrument(app, alerts=None)
    with pytest.raises(ConfigurationError, match="log_context"):
        instrument(app, logging=False, metrics=False, alerts=None, log_context=("tenant",))


def test_dangerous_settings_are_reported_when_the_worker_starts(app: Celery) -> None:
    app.conf.update(accept_content=["json", "pickle"], task_soft_time_limit=None, task_time_limit=None)
    instrument(app, logging=False, metrics=False, alerts=None)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("celery_kit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)  # the embedded worker sets the root logger to ERROR
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(r.getMessage() for r in records)
    assert "pickle-accepted" in text
    assert "no-time-limits" in text


def test_the_check_only_runs_for_its_own_app(app: Celery) -> None:
    app.conf.update(accept_content=["json", "pickle"])
    instrument(app, logging=False, metrics=False, alerts=None)
    clean = Celery("clean", broker="memory://", set_as_current=False)
    clean.conf.update(task_soft_time_limit=5, task_time_limit=10)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("celery_kit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with start_worker(clean, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            pass
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert [r.getMessage() for r in records if "pickle" in r.getMessage()] == []
