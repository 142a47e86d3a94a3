"""Pytest plugin: make `celery_kit:ValidatedTask` every app's default task class.

Loaded with ``-p compat.kit_default_task_cls`` so it is imported before Celery's test
modules and conftest. ``Celery.__init__`` does ``self.task_cls = task_cls or self.task_cls``
and ``create_task_cls()`` resolves the string with ``symbol_by_name``, so setting the class
attribute changes the default for every app a test builds (``Celery(...)``, ``TestApp()``,
the ``celery_app`` fixture) while an explicit ``task_cls=`` argument still wins, as it would
in a user's app. ``app_has_custom()`` stops at ``Celery`` itself, so the app does not count
as having a custom task class (that flag only matters to the Django fixup).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from celery.app import base

import celery_kit

TASK_CLS = "celery_kit:ValidatedTask"

base.Celery.task_cls = TASK_CLS


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to run when the default did not take, or the kit is not the checkout under test.

    Either would be a silent no-op that reports zero regressions.
    """
    probe = base.Celery("compat-probe", set_as_current=False)
    if not issubclass(probe.Task, celery_kit.ValidatedTask):
        raise pytest.UsageError(f"Celery.task_cls = {TASK_CLS!r} did not reach a new app: {probe.Task!r}")
    expected = os.environ.get("COMPAT_EXPECT_KIT_FROM")
    loaded = Path(celery_kit.__file__).resolve()
    if expected and not loaded.is_relative_to(Path(expected).resolve()):
        raise pytest.UsageError(f"celery_kit was imported from {loaded}, not from {expected}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"celery_kit default task class: {TASK_CLS} (celery_kit from {celery_kit.__file__})"
