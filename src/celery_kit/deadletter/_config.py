"""Where an app's dead letters live and how many it keeps: read once from ``app.conf``.

Settings (all optional):

* ``celery_kit_dead_letters`` -- turn capture on (``instrument(app, dead_letters=...)``
  wins); on in ``presets.production()`` and ``presets.reliable()``.
* ``celery_kit_dead_letter_url`` -- a Redis URL for the store; default: the broker, Redis
  or RabbitMQ, whichever it is.
* ``celery_kit_dead_letter_prefix`` -- Redis key prefix / RabbitMQ stream name; default
  ``celery_kit.dlq.<app.main>``.
* ``celery_kit_dead_letter_max_entries`` (10 000) and ``celery_kit_dead_letter_max_age``
  (14 days, seconds) -- retention; the oldest entries go first, and every drop is counted.
* ``celery_kit_dead_letter_claim_timeout`` (60 s) -- how long a replay's claim on an entry
  holds when the replaying process dies between its claim and its publish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigurationError

__all__ = [
    "ENABLED_SETTING",
    "MAX_AGE_SETTING",
    "MAX_ENTRIES_SETTING",
    "PREFIX_SETTING",
    "URL_SETTING",
    "StoreConfig",
    "store_config",
]

ENABLED_SETTING = "celery_kit_dead_letters"
URL_SETTING = "celery_kit_dead_letter_url"
PREFIX_SETTING = "celery_kit_dead_letter_prefix"
MAX_ENTRIES_SETTING = "celery_kit_dead_letter_max_entries"
MAX_AGE_SETTING = "celery_kit_dead_letter_max_age"
CLAIM_TIMEOUT_SETTING = "celery_kit_dead_letter_claim_timeout"

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_AGE = 14 * 24 * 3600.0
DEFAULT_CLAIM_TIMEOUT = 60.0

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


@dataclass(frozen=True)
class StoreConfig:
    """One app's store: which backend, where, and its retention."""

    backend: str  # "redis" or "rabbitmq"
    url: str
    prefix: str
    max_entries: int
    max_age: float
    claim_timeout: float


def _first_broker_url(conf: Any) -> str:
    broker = conf.broker_write_url or conf.broker_url or ""
    first = broker[0] if isinstance(broker, (list, tuple)) and broker else str(broker)
    return first.split(";")[0]


def _reveal(value: Any) -> str:
    reveal = getattr(value, "get_secret_value", None)
    return str(reveal() if reveal is not None else value)


def _number(conf: Any, name: str, default: float, *, whole: bool = False) -> Any:
    value = conf.get(name)
    if value is None:
        return int(default) if whole else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"app.conf.{name} = {value!r}: give a positive number.")
    return int(value) if whole else float(value)


def default_prefix(app: Any) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(app.main or "celery"))
    return f"celery_kit.dlq.{name}"


def store_config(app: Any) -> StoreConfig:
    """The store ``app`` writes to and reads from."""
    conf = app.conf
    url = conf.get(URL_SETTING)
    prefix = str(conf.get(PREFIX_SETTING) or default_prefix(app))
    retention = {
        "max_entries": _number(conf, MAX_ENTRIES_SETTING, DEFAULT_MAX_ENTRIES, whole=True),
        "max_age": _number(conf, MAX_AGE_SETTING, DEFAULT_MAX_AGE),
        "claim_timeout": _number(conf, CLAIM_TIMEOUT_SETTING, DEFAULT_CLAIM_TIMEOUT),
    }
    if url:
        text = _reveal(url)
        if not text.startswith(_REDIS_SCHEMES):
            raise ConfigurationError(
                f"app.conf.{URL_SETTING} must be a Redis URL (redis://host:6379/0); to use a "
                "RabbitMQ broker's own store, leave the setting unset."
            )
        return StoreConfig("redis", text, prefix, **retention)
    broker = _first_broker_url(conf)
    if broker.startswith(_REDIS_SCHEMES):
        return StoreConfig("redis", broker, prefix, **retention)
    if broker.startswith(_AMQP_SCHEMES):
        return StoreConfig("rabbitmq", broker, prefix, **retention)
    scheme = broker.split("://")[0] or "none"
    raise ConfigurationError(
        f"dead letters live on the app's broker, Redis or RabbitMQ; this broker is {scheme!r}. "
        f"Set app.conf.{URL_SETTING} = 'redis://host:6379/0', or turn dead letters off."
    )
