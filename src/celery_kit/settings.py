"""``KitSettings``: a service's celery_kit configuration from ``CELERY_KIT_*`` variables.

Twelve-factor services configure by environment; this model reads every knob the kit
has from ``CELERY_KIT_<FIELD>`` environment variables and a ``.env`` file (environment
wins), validates it once at startup, and builds the Celery config from the chosen
preset::

    from celery import Celery
    from celery_kit.settings import KitSettings

    settings = KitSettings()                 # CELERY_KIT_BROKER_URL=redis://... etc.
    app = Celery("email")
    app.config_from_object(settings.celery_config())

URLs and alert sinks are :class:`~pydantic.SecretStr`: their reprs, ``str()`` and
error messages never show them. An invalid value raises
:class:`~celery_kit.ConfigurationError` naming the environment variable to fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._errors import ConfigurationError
from ._task import DEFAULT_MAX_PAYLOAD_BYTES
from .presets import PRESETS, Preset

__all__ = ["ENV_PREFIX", "KitSettings"]

#: Every field ``name`` is read from the environment variable ``CELERY_KIT_<NAME>``.
ENV_PREFIX = "CELERY_KIT_"
_SECRET_FIELDS = frozenset(
    {"broker_url", "result_backend", "alert_sinks", "alert_redis_url", "dead_letter_url"}
)


def _split_list(value: Any) -> Any:
    """A list from JSON (``["a", "b"]``) or commas (``a,b``); other values pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); write a,b,c or a JSON list") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_name(loc: tuple[int | str, ...]) -> str:
    return f"{ENV_PREFIX}{str(loc[0]).upper()}" if loc else "settings"


class KitSettings(BaseSettings):
    """celery_kit settings, from ``CELERY_KIT_*`` environment variables and ``.env``.

    Lists (``CELERY_KIT_QUEUES``, ``CELERY_KIT_ALERT_SINKS``) are comma-separated or a
    JSON list. Keyword arguments to the constructor win over the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    #: The broker URL (``redis://``, ``amqp://``, ...); required.
    broker_url: SecretStr
    #: The result backend URL; none by default (no results stored).
    result_backend: SecretStr | None = None
    #: Which preset :meth:`celery_config` builds.
    preset: Preset = Preset.PRODUCTION
    #: Where the worker exposes Prometheus metrics. All interfaces by default, unlike
    #: ``instrument``'s 127.0.0.1: settings describe a deployment, whose Prometheus scrapes
    #: the pod's address. Port 0 turns the endpoint off.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9808, ge=0, le=65535)
    #: The heartbeat file the worker writes (``%n`` expands to the node name); default: a
    #: per-node file under the temp directory. Set it as the environment variable, not
    #: only in ``.env``: the probe CLI reads ``CELERY_KIT_HEALTH_FILE`` and nothing else.
    health_file: Path | None = None
    #: Where alerts go: URLs (webhooks, ``smtp://``) or sink names; may hold tokens.
    alert_sinks: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: A Redis URL for the alert throttle shared by every pool process and host (one alert
    #: per incident, not one per process); per-process throttling without it.
    alert_redis_url: SecretStr | None = None
    #: Keep dead letters (``celery_kit_dead_letters``); default: the preset's choice (on in
    #: production and reliable).
    dead_letters: bool | None = None
    #: A Redis URL for the dead-letter store (``celery_kit_dead_letter_url``); default: the broker.
    dead_letter_url: SecretStr | None = None
    #: Payload size cap in bytes (``celery_kit_max_payload_bytes``); 0 disables it.
    max_payload_bytes: int = Field(DEFAULT_MAX_PAYLOAD_BYTES, ge=0)
    #: Default soft and hard time limits, in seconds.
    soft_time_limit: float = Field(300.0, gt=0)
    time_limit: float = Field(360.0, gt=0)
    #: The longest ETA/countdown the app schedules, in seconds.
    eta_horizon: float = Field(3600.0, ge=0)
    #: Queues to declare and route to (``email,reports``), and the task-name prefix.
    queues: Annotated[list[str], NoDecode] = Field(default_factory=list)
    route_prefix: str = ""
    default_queue: str = Field("celery", min_length=1)
    #: Default rate limit for every task, e.g. ``100/m``.
    rate_limit: str | None = Field(None, pattern=r"^\d+(\.\d+)?(/[smh])?$")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _configuration_error(exc) from None

    @field_validator("preset", mode="before")
    @classmethod
    def _normalise_preset(cls, value: Any) -> Any:
        return value.strip().lower().replace("-", "_") if isinstance(value, str) else value

    @field_validator("queues", "alert_sinks", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a queue twice")
        if any(not name or name != name.strip() or " " in name for name in value):
            raise ValueError("queue names must be non-empty and contain no spaces")
        return value

    @model_validator(mode="after")
    def _soft_below_hard(self) -> KitSettings:
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(
                f"soft_time_limit ({self.soft_time_limit:g}) must be below time_limit "
                f"({self.time_limit:g}); lower {ENV_PREFIX}SOFT_TIME_LIMIT or raise {ENV_PREFIX}TIME_LIMIT"
            )
        return self

    def celery_config(self, **overrides: Any) -> dict[str, Any]:
        """The chosen preset's settings mapping, built from these settings.

        ``overrides`` win over the settings: the preset's own arguments (``queues=``,
        ``route_prefix=``, ``time_limit=`` ...) as well as any Celery setting name.

        Raises:
            ConfigurationError: the preset refuses the values (e.g. an unknown broker
                scheme); the message names the fix.
        """
        build = PRESETS[self.preset]
        arguments: dict[str, Any] = {
            "queues": self.queues or None,
            "route_prefix": self.route_prefix,
            "default_queue": self.default_queue,
            "rate_limits": self.rate_limit,
            "soft_time_limit": self.soft_time_limit,
            "time_limit": self.time_limit,
            "eta_horizon": self.eta_horizon,
            "max_payload_bytes": self.max_payload_bytes,
            # Read by instrument(app): where metrics are served, where alerts go, where
            # the heartbeat is written.
            "celery_kit_metrics_port": self.metrics_port,
            "celery_kit_metrics_host": self.metrics_host,
            "celery_kit_alert_sinks": list(self.alert_sinks),
        }
        if self.alert_redis_url is not None:
            arguments["celery_kit_alert_redis_url"] = self.alert_redis_url
        if self.health_file is not None:
            arguments["celery_kit_health_file"] = str(self.health_file)
        if self.dead_letters is not None:
            arguments["celery_kit_dead_letters"] = self.dead_letters
        if self.dead_letter_url is not None:
            arguments["celery_kit_dead_letter_url"] = self.dead_letter_url
        arguments.update(overrides)
        return build(
            self.broker_url.get_secret_value(),
            self.result_backend.get_secret_value() if self.result_backend is not None else None,
            **arguments,
        )


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    """pydantic's error as a message naming each environment variable; secrets never echoed."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        field = str(loc[0]) if loc else ""
        if error["type"] == "missing":
            lines.append(f"  {_env_name(loc)}: required, but not set")
            continue
        shown = ""
        if field not in _SECRET_FIELDS and "input" in error and not isinstance(error["input"], dict):
            shown = f" (got {error['input']!r})"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {_env_name(loc)}: {message}{shown}")
    return ConfigurationError(
        "invalid celery_kit settings:\n"
        + "\n".join(lines)
        + "\nSet or fix these environment variables (or the .env file)."
    )
