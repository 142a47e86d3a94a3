"""The daily delivery report and the weekly cleanup, and their payload models.

The request models live here, not in :mod:`app.tasks.reports`, because the beat schedule
(``celeryconfig.py``) validates its payloads against them at import time, before the
Celery app -- which the task modules need -- exists.
"""

from __future__ import annotations

import contextlib
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from .delivery_log import DeliveryLog

__all__ = [
    "CleanupRequest",
    "CleanupResult",
    "DailyReport",
    "DailyReportRequest",
    "build_daily_report",
    "cleanup",
    "remove_partial_report",
    "render_text",
    "report_path",
    "yesterday",
]


class DailyReportRequest(BaseModel):
    """Payload of ``generate_daily_report``."""

    model_config = ConfigDict(extra="forbid")

    #: The day to report on; ``None`` (what beat sends) means yesterday, UTC.
    day: date | None = None
    #: Who gets the report by email (through the ``email`` queue).
    recipients: list[EmailStr] = Field(default_factory=list, max_length=50)


class DailyReport(BaseModel):
    """Result of ``generate_daily_report``: also the JSON written to the reports folder."""

    day: date
    total: int
    by_domain: dict[str, int]
    generated_at: datetime
    path: str
    emailed_to: list[str] = Field(default_factory=list)


class CleanupRequest(BaseModel):
    """Payload of ``cleanup_old_data``."""

    model_config = ConfigDict(extra="forbid")

    #: Reports and delivery counters older than this are deleted (at least a day).
    older_than_days: int = Field(30, ge=1, le=3650)


class CleanupResult(BaseModel):
    cutoff: date
    reports_removed: int
    delivery_days_removed: int


def yesterday() -> date:
    return datetime.now(timezone.utc).date() - timedelta(days=1)


def report_path(reports_dir: Path, day: date) -> Path:
    return reports_dir / f"daily-{day.isoformat()}.json"


def build_daily_report(log: DeliveryLog, reports_dir: Path, day: date) -> DailyReport:
    """Count ``day``'s deliveries and write the report, atomically (a reader never sees
    half a file; a run cut short leaves only a ``.partial`` file behind)."""
    by_domain = dict(sorted(log.counts(day).items()))
    path = report_path(reports_dir, day)
    report = DailyReport(
        day=day,
        total=sum(by_domain.values()),
        by_domain=by_domain,
        generated_at=datetime.now(timezone.utc),
        path=str(path),
    )
    reports_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(report.model_dump_json(indent=2) + "\n")
    os.replace(partial, path)
    return report


def remove_partial_report(reports_dir: Path, day: date) -> bool:
    """Delete what a report run cut short left behind; True if there was something."""
    partial = report_path(reports_dir, day).with_suffix(".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
        return True
    return False


def render_text(report: DailyReport) -> str:
    """The report as the body of an email."""
    lines = [f"Emails delivered on {report.day.isoformat()}: {report.total}", ""]
    lines += [f"  {domain}: {count}" for domain, count in report.by_domain.items()]
    if not report.by_domain:
        lines.append("  (none)")
    return "\n".join(lines) + "\n"


def cleanup(log: DeliveryLog, reports_dir: Path, older_than_days: int, today: date) -> CleanupResult:
    """Delete daily reports and delivery counters of days before ``today - older_than_days``."""
    cutoff = today - timedelta(days=older_than_days)
    removed = 0
    if reports_dir.is_dir():
        for path in reports_dir.glob("daily-*.json"):
            try:
                day = date.fromisoformat(path.stem.removeprefix("daily-"))
            except ValueError:
                continue  # not a report of ours
            if day < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
    return CleanupResult(
        cutoff=cutoff, reports_removed=removed, delivery_days_removed=log.forget_before(cutoff)
    )
