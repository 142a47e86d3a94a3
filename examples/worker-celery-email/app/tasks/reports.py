"""The periodic tasks: the daily delivery report and the weekly cleanup.

Beat sends both (``celeryconfig.beat_schedule``); they can also be run by hand::

    generate_daily_report.delay(day="2024-05-01", recipients=["ops@example.com"])
    cleanup_old_data.delay(older_than_days=90)
"""

from __future__ import annotations

from datetime import datetime, timezone

from celery_kit import validated_task

from app.celery_app import app
from app.config import get_settings
from app.processors.delivery_log import DeliveryLog
from app.processors.report_processor import (
    CleanupRequest,
    CleanupResult,
    DailyReport,
    DailyReportRequest,
    build_daily_report,
    cleanup,
    remove_partial_report,
    render_text,
    yesterday,
)
from app.tasks.email import send_email
from app.utils.logger import get_logger

__all__ = ["cleanup_old_data", "generate_daily_report"]

log = get_logger(__name__)

_settings = get_settings()
_reports_dir = _settings.worker.reports_dir
_deliveries = DeliveryLog.from_url(_settings.worker.state_url.get_secret_value(), _settings.worker.key_prefix)


@validated_task(app, soft_time_limit=120, time_limit=150)
def generate_daily_report(request: DailyReportRequest) -> DailyReport:
    """Write the day's report to the reports folder and email it to the recipients.

    The emails go through ``send_email`` (the ``email`` queue), so each one has its own
    retries and a slow relay never holds this task.
    """
    day = request.day or yesterday()
    report = build_daily_report(_deliveries, _reports_dir, day)
    subject = f"Email deliveries on {day.isoformat()}: {report.total}"
    body = render_text(report)
    for recipient in request.recipients:
        send_email.delay(to=recipient, subject=subject, body=body)
    log.info("daily report written", day=day.isoformat(), total=report.total, path=report.path)
    return report.model_copy(update={"emailed_to": [str(r) for r in request.recipients]})


@generate_daily_report.on_soft_timeout
def remove_unfinished_report(request: DailyReportRequest) -> None:
    """The run was cut short: delete the half-written file; the next run writes it anew."""
    remove_partial_report(_reports_dir, request.day or yesterday())


@validated_task(app, soft_time_limit=300, time_limit=360)
def cleanup_old_data(request: CleanupRequest) -> CleanupResult:
    """Delete reports and delivery counters older than ``older_than_days`` days."""
    result = cleanup(_deliveries, _reports_dir, request.older_than_days, datetime.now(timezone.utc).date())
    log.info(
        "old data removed",
        cutoff=result.cutoff.isoformat(),
        reports=result.reports_removed,
        delivery_days=result.delivery_days_removed,
    )
    return result
