"""Loggers of the service.

``instrument(app)`` (in :mod:`app.celery_app`) routes every log line of a worker through
structlog -- JSON lines in a container, a readable console in a terminal -- and binds the
running task's ``task_id``, ``task_name``, ``queue`` and ``retries`` to every line logged
while it runs. So a module only asks for its logger; key-value pairs become JSON fields::

    log = get_logger(__name__)
    log.info("report written", day="2024-05-01", path="/reports/daily-2024-05-01.json")
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["get_logger"]


def get_logger(name: str) -> Any:
    """A structlog logger named ``name`` (the module's ``__name__``)."""
    return structlog.get_logger(name)
