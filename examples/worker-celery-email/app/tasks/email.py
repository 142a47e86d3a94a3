"""``send_email``: one email through the SMTP relay, validated, retried, time-limited.

What the template's ``send_email`` did by hand, and what replaces it:

* ``EmailTask(to=..., ...)`` inside the task: the payload model **is** the task's
  signature, validated in the caller (``send_email.delay(to="nope", ...)`` raises
  ``pydantic.ValidationError`` and publishes nothing) and again on the worker (a message
  from another producer that does not fit fails at once, never retried).
* ``autoretry_for=(Exception,)`` plus ``self.retry()``: a :class:`RetryPolicy` retrying
  SMTP errors only -- ``4xx`` replies, dropped connections, timeouts -- with exponential
  backoff, full jitter and a deadline. A ``5xx`` reply is final
  (:class:`~celery_kit.PermanentError`: no retry, one alert).
* No timeout at all: a soft limit (the cleanup hook parks the message, whose delivery
  state is unknown) and a hard limit above it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from celery_kit import PermanentError, RetryPolicy, ValidatedTask, validated_task
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from redis import RedisError

from app.celery_app import app
from app.config import get_settings
from app.processors.delivery_log import DeliveryLog
from app.processors.email_processor import SMTP_ERRORS, SmtpSender, describe, is_permanent
from app.utils.logger import get_logger

__all__ = ["EmailRequest", "EmailSent", "send_email"]

log = get_logger(__name__)

# Read once per process, at import: nothing on the task's path reads settings.
_settings = get_settings()
_sender = SmtpSender(_settings.smtp)
_deliveries = DeliveryLog.from_url(_settings.worker.state_url.get_secret_value(), _settings.worker.key_prefix)


class EmailRequest(BaseModel):
    """What to send. Keep it small: ids and text, never attachments (pass a reference)."""

    model_config = ConfigDict(extra="forbid")

    to: EmailStr
    subject: str = Field(min_length=1, max_length=255)
    body: str = Field(max_length=100_000)
    reply_to: EmailStr | None = None


class EmailSent(BaseModel):
    """What the relay accepted."""

    message_id: str
    to: EmailStr
    #: 1 on the first attempt, 2 after one retry, ...
    attempts: int
    accepted_at: datetime


@validated_task(
    app,
    bind=True,
    soft_time_limit=_settings.worker.email_soft_time_limit,
    time_limit=_settings.worker.email_time_limit,
    retry=RetryPolicy(
        retry_on=SMTP_ERRORS,
        max_retries=_settings.worker.email_max_retries,
        backoff=_settings.worker.email_retry_backoff,
        max_backoff=_settings.worker.email_retry_max_backoff,
        deadline=_settings.worker.email_retry_deadline,
    ),
)
def send_email(self: ValidatedTask, payload: EmailRequest) -> EmailSent:
    """Send ``payload`` through the SMTP relay; retried on transient SMTP errors."""
    task_id = self.request.id or "direct"
    message_id = _sender.message_id(task_id)  # the same on every retry of this task
    message = _sender.compose(
        payload.to, payload.subject, payload.body, message_id=message_id, reply_to=payload.reply_to
    )
    try:
        _sender.send(message)
    except SMTP_ERRORS as exc:
        if is_permanent(exc):
            # No address in the message: it ends up in alerts and the result backend.
            raise PermanentError(
                f"the SMTP relay refused the email for good ({describe(exc)}); check the "
                "address or the relay's configuration, retrying will not help"
            ) from exc
        raise  # transient: the RetryPolicy schedules the next attempt
    accepted = datetime.now(timezone.utc)
    try:
        _deliveries.record(payload.to, accepted.date())
    except RedisError as exc:
        # The email is sent: a failure to count it must not fail (and re-send) it.
        log.warning("delivery not counted", error=str(exc), message_id=message_id)
    log.info("email accepted by relay", message_id=message_id)
    return EmailSent(
        message_id=message_id, to=payload.to, attempts=self.request.retries + 1, accepted_at=accepted
    )


@send_email.on_soft_timeout
def park_unconfirmed_email(payload: EmailRequest, request: Any) -> None:
    """The soft limit interrupted the SMTP session (the sender already closed it): the relay
    may or may not have the message, so it is not retried blindly but parked for review."""
    message_id = _sender.message_id(request.id)
    _deliveries.park(
        {
            "task_id": request.id,
            "message_id": message_id,
            "to": payload.to,
            "subject": payload.subject,
            "parked_at": datetime.now(timezone.utc).isoformat(),
            "reason": "soft time limit during SMTP session; delivery state unknown",
        }
    )
    log.warning("email parked: delivery state unknown", message_id=message_id)
