"""Celery configuration: a celery_kit preset, the queues and routes, the typed beat schedule.

The template's hand-written ``celeryconfig.py`` (JSON only, UTC, retry on startup,
``task_routes``, ``task_annotations``) is what ``celery_kit.presets`` returns, plus time
limits, child recycling, Flower events and a Redis ``visibility_timeout`` computed from the
limits. The preset is chosen by ``CELERY_KIT_PRESET`` (``production`` by default).

Routing by task-name prefix: ``queues=["email", "reports"]`` with
``route_prefix="app.tasks."`` routes ``app.tasks.email.*`` to ``email`` and
``app.tasks.reports.*`` to ``reports``, and declares both queues (and the default one).

The beat schedule is built with :func:`celery_kit.schedules.periodic`: each entry's
payload is validated **when this module is imported**, so a bad value (say
``EMAIL_WORKER_REPORT_RECIPIENTS=ops@`` or ``EMAIL_WORKER_CLEANUP_AFTER_DAYS=0``) stops
the deploy with a ``ConfigurationError`` instead of failing the 9 a.m. run. The tasks are
named rather than imported (the task modules need the Celery app, which needs this
module), so ``periodic`` validates against their payload models (``model=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery.schedules import crontab
from celery_kit import ConfigurationError
from celery_kit.presets import Broker, detect_broker
from celery_kit.schedules import periodic

from app.config import Settings, get_settings
from app.processors.report_processor import CleanupRequest, DailyReportRequest

__all__ = [
    "CLEANUP_TASK",
    "DAILY_REPORT_TASK",
    "DEFAULT_RATE_LIMIT",
    "QUEUES",
    "ROUTE_PREFIX",
    "beat_schedule",
    "build_beat_schedule",
    "celery_settings",
    "config",
]

QUEUES = ("email", "reports")
ROUTE_PREFIX = "app.tasks."
#: The template's ``task_annotations = {'*': {'rate_limit': '100/m'}}``; per worker and
#: task type. ``CELERY_KIT_RATE_LIMIT`` overrides it.
DEFAULT_RATE_LIMIT = "100/m"

DAILY_REPORT_TASK = "app.tasks.reports.generate_daily_report"
CLEANUP_TASK = "app.tasks.reports.cleanup_old_data"


def build_beat_schedule(recipients: Sequence[str], cleanup_after_days: int) -> dict[str, dict[str, Any]]:
    """The periodic tasks, their payloads validated now.

    Raises:
        ConfigurationError: a payload does not fit its task (the pydantic error is quoted
            and chained as ``__cause__``).
    """
    return {
        # Every day at 09:00 UTC: yesterday's deliveries, emailed to the recipients.
        "daily-report": periodic(
            DAILY_REPORT_TASK,
            crontab(hour=9, minute=0),
            {"day": None, "recipients": list(recipients)},
            model=DailyReportRequest,
            expires=3600,  # a report beat could not deliver within an hour is skipped
        ),
        # Sundays at 02:00 UTC.
        "cleanup-old-data": periodic(
            CLEANUP_TASK,
            crontab(hour=2, minute=0, day_of_week=0),
            {"older_than_days": cleanup_after_days},
            model=CleanupRequest,
            expires=6 * 3600,
        ),
    }


def celery_settings(settings: Settings, schedule: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The Celery settings mapping: the preset from ``settings.kit`` with this service's
    queues, routes, rate limit and beat schedule."""
    kit = settings.kit.model_copy(
        update={
            "queues": list(QUEUES),
            "route_prefix": ROUTE_PREFIX,
            "rate_limit": settings.kit.rate_limit or DEFAULT_RATE_LIMIT,
        }
    )
    overrides: dict[str, Any] = {"beat_schedule": schedule}
    key_prefix = settings.worker.broker_key_prefix
    if key_prefix:
        if detect_broker(kit.broker_url.get_secret_value()) is not Broker.REDIS:
            raise ConfigurationError(
                "EMAIL_WORKER_BROKER_KEY_PREFIX only works with a Redis broker; unset it, or use "
                "a RabbitMQ virtual host to separate deployments."
            )
        overrides["broker_transport_options"] = {"global_keyprefix": key_prefix}
        backend = kit.result_backend.get_secret_value() if kit.result_backend else ""
        if backend.startswith(("redis://", "rediss://")):
            overrides["result_backend_transport_options"] = {"global_keyprefix": key_prefix}
    return kit.celery_config(**overrides)


_settings = get_settings()
#: The beat schedule, validated at import.
beat_schedule = build_beat_schedule(_settings.worker.report_recipients, _settings.worker.cleanup_after_days)
#: Everything ``app.config_from_object`` needs.
config = celery_settings(_settings, beat_schedule)
