"""_lifecycle: process hooks and the logging take-over belong to the worker's own app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, signals

from celery_kit import Observer, _bridge, _lifecycle, instrument, uninstrument


class ProcessHooks(Observer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_process_init(self) -> None:
        self.calls.append("process_init")


class _Worker:
    def __init__(self, app: Celery) -> None:
        self.app = app


@pytest.fixture
def two_apps() -> Iterator[tuple[Celery, Celery, ProcessHooks, ProcessHooks]]:
    quiet = Celery("lc-quiet", broker="memory://localhost/", set_as_current=False)
    loud = Celery("lc-loud", broker="memory://localhost/", set_as_current=False)
    hooks_quiet, hooks_loud = ProcessHooks(), ProcessHooks()
    instrument(quiet, logging=False, metrics=False, alerts=None, health=False, observers=[hooks_quiet])
    instrument(loud, metrics=False, alerts=None, health=False, observers=[hooks_loud])
    saved = _lifecycle._worker_app
    yield quiet, loud, hooks_quiet, hooks_loud
    _lifecycle._worker_app = saved
    _bridge.connect_logging(True)  # as it was: other tests' apps log
    uninstrument(loud)
    uninstrument(quiet)


def _setup_logging_receivers() -> list[Any]:
    return [r for r in signals.setup_logging.receivers if "celery_kit" in str(r[0])]


def test_a_pool_process_tells_only_its_workers_app(two_apps: Any) -> None:
    quiet, _loud, hooks_quiet, hooks_loud = two_apps
    _lifecycle._on_worker_init(sender=_Worker(quiet))
    _lifecycle._on_process_init()
    assert (hooks_quiet.calls, hooks_loud.calls) == (["process_init"], [])


def test_a_worker_of_an_app_without_logging_keeps_celerys_logging(two_apps: Any) -> None:
    """Another app of the module logs: the receiver that makes Celery skip its own logging
    set-up must go, in this worker process."""
    quiet, *_ = two_apps
    assert _setup_logging_receivers()  # connected: loud logs
    _lifecycle._on_celeryd_init(sender="w@h", instance=_Worker(quiet), options={})
    assert _setup_logging_receivers() == []
