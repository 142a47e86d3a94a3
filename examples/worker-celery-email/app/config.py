"""Settings of the email worker, read once from environment variables (and ``.env``).

Three groups, each a pydantic-settings model with its own prefix:

* ``CELERY_KIT_*`` -- :class:`celery_kit.settings.KitSettings`: broker, result backend,
  preset, default time limits, metrics port, alert sinks, rate limit.
* ``SMTP_*`` -- :class:`SmtpSettings`: the SMTP server the email task talks to.
* ``EMAIL_WORKER_*`` -- :class:`WorkerSettings`: this service's own knobs (email task
  limits and retries, where reports go, the Redis state store).

:func:`get_settings` validates all three at import time of the Celery app, so a bad value
stops the worker (or beat) at start with a :class:`~celery_kit.ConfigurationError` naming
the variable -- never at 9 a.m. when the report runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from celery_kit import ConfigurationError
from celery_kit.settings import KitSettings
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "SmtpSettings", "WorkerSettings", "get_settings"]


class SmtpSettings(BaseSettings):
    """The SMTP relay (``SMTP_HOST``, ``SMTP_PORT``, ...)."""

    model_config = SettingsConfigDict(env_prefix="SMTP_", env_file=".env", extra="ignore")

    host: str = Field("localhost", min_length=1)
    port: int = Field(25, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    #: Upgrade the connection with STARTTLS (port 587); ``ssl`` is TLS from the start (465).
    starttls: bool = False
    ssl: bool = False
    #: Socket timeout of every SMTP command, in seconds; keep it below the soft time limit.
    timeout: float = Field(10.0, gt=0)
    #: The ``From:`` of every email.
    sender: str = Field("Email Worker <noreply@example.com>", min_length=3)

    @model_validator(mode="after")
    def _one_tls_mode(self) -> SmtpSettings:
        if self.starttls and self.ssl:
            raise ValueError("set SMTP_STARTTLS or SMTP_SSL, not both")
        return self


def _split_list(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        return json.loads(text)
    return [part.strip() for part in text.split(",") if part.strip()]


class WorkerSettings(BaseSettings):
    """This service's own settings (``EMAIL_WORKER_*``)."""

    model_config = SettingsConfigDict(env_prefix="EMAIL_WORKER_", env_file=".env", extra="ignore")

    #: Redis holding the delivery log the daily report reads (and timed-out sends).
    state_url: SecretStr = SecretStr("redis://localhost:6379/2")
    #: Prefix of every key this service writes to ``state_url``.
    key_prefix: str = Field("email-worker", min_length=1)
    #: Redis brokers only: kombu's ``global_keyprefix`` -- every broker key (queues
    #: included) and, with a Redis result backend, every result key starts with it, so
    #: several deployments (or test runs) can share one Redis.
    broker_key_prefix: str = ""
    #: Where the daily reports are written (a shared volume in production).
    reports_dir: Path = Path("reports")
    #: Who receives the daily report by email; validated by the beat schedule at import.
    report_recipients: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: The weekly cleanup removes reports and delivery logs older than this many days.
    #: Deliberately unchecked here: the beat schedule's payload model validates it.
    cleanup_after_days: int = 30
    #: Time limits of the email task: the soft one lets the cleanup hook run.
    email_soft_time_limit: float = Field(30.0, gt=0)
    email_time_limit: float = Field(45.0, gt=0)
    #: Retries of transient SMTP errors: exponential backoff with full jitter.
    email_max_retries: int = Field(6, ge=0)
    email_retry_backoff: float = Field(30.0, ge=0)
    email_retry_max_backoff: float = Field(900.0, ge=0)
    #: No retry starts later than this many seconds after the first attempt.
    email_retry_deadline: float = Field(4 * 3600.0, gt=0)

    @field_validator("report_recipients", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _split_list(value)

    @model_validator(mode="after")
    def _soft_below_hard(self) -> WorkerSettings:
        if self.email_soft_time_limit >= self.email_time_limit:
            raise ValueError(
                "email_soft_time_limit must be below email_time_limit, or the cleanup hook never runs"
            )
        return self


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment."""

    kit: KitSettings
    smtp: SmtpSettings
    worker: WorkerSettings


def _load(model: type[BaseSettings], prefix: str) -> Any:
    """The model read from the environment; a bad value becomes a ConfigurationError."""
    try:
        return model()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            name = f"{prefix}{str(loc[0]).upper()}" if loc else f"{prefix}*"
            lines.append(f"  {name}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigurationError(
            f"invalid {prefix}* settings:\n" + "\n".join(lines) + "\nFix these environment variables."
        ) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The service's settings, read and validated once per process.

    Raises:
        ConfigurationError: a variable is missing or invalid; the message names it.
    """
    return Settings(
        kit=KitSettings(),
        smtp=_load(SmtpSettings, "SMTP_"),
        worker=_load(WorkerSettings, "EMAIL_WORKER_"),
    )
