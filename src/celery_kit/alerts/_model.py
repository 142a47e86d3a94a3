"""The alert a human reads: what failed, how often, and where to look."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from .._redact import redact

__all__ = ["Alert", "AlertKind", "redact"]


class AlertKind(str, enum.Enum):
    """What a human must act on. Retries never alert."""

    FINAL_FAILURE = "final_failure"
    SOFT_TIMEOUT = "soft_timeout"
    HARD_TIMEOUT = "hard_timeout"
    WORKER_LOST = "worker_lost"
    INVALID_PAYLOAD = "invalid_payload"


class Alert(BaseModel):
    """One alert, or a digest of the occurrences a throttle window held back.

    No task arguments, keyword arguments or results are included unless the task opts
    in with ``alert_payload=True``; even then secrets are masked by the kit's one redactor
    (:func:`celery_kit.alerts.redact`), as in logs and ``celery kit config``.
    """

    kind: AlertKind
    task_name: str
    task_id: str | None = None
    root_id: str | None = None
    queue: str | None = None
    retries: int = 0
    exception_type: str | None = None
    exception_message: str | None = None
    reason: str = ""
    hostname: str | None = None
    first_seen: datetime
    last_seen: datetime
    #: Occurrences this alert stands for: 1 for an immediate alert, N for a digest.
    occurrences: int = 1
    digest: bool = False
    window_seconds: float | None = None
    link: str | None = None
    payload: Any = Field(default=None)

    @property
    def fingerprint(self) -> str:
        """Occurrences with the same fingerprint are one incident."""
        return f"{self.task_name}|{self.kind.value}|{self.exception_type or '-'}"

    @property
    def summary(self) -> str:
        what = f"{self.task_name}: {self.kind.value.replace('_', ' ')}"
        if self.exception_type:
            what += f" ({self.exception_type}: {self.exception_message or ''})".rstrip()
        if self.digest:
            minutes = (self.window_seconds or 0) / 60
            return f"{self.occurrences} more in the last {minutes:g} min - {what}"
        return what
