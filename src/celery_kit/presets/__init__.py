"""Production-safe Celery configuration in one call, checked and broker-aware.

Each preset returns a plain ``dict`` of Celery settings::

    from celery import Celery
    from celery_kit import presets

    app = Celery("email")
    app.config_from_object(
        presets.reliable(
            "redis://localhost:6379/0",
            "redis://localhost:6379/1",
            queues=["email", "reports"],
            route_prefix="app.tasks.",
            rate_limits="100/m",
        )
    )
    for warning in presets.check(app.conf, tasks=app.tasks.values()):
        ...

* :func:`production` -- JSON only, UTC, time limits, Flower events, child recycling,
  soft shutdown.
* :func:`reliable` -- production plus late acks and requeue on worker loss; the Redis
  ``visibility_timeout`` computed from the limits, quorum queues on RabbitMQ.
* :func:`low_latency`, :func:`development`, :func:`testing` (a real worker, not eager).
* :func:`check` -- the dangerous combinations in any config, with their fixes.
* :func:`periodic` -- beat schedule entries whose payload is validated at import.
"""

from __future__ import annotations

from ..schedules import periodic
from ._broker import Broker, broker_schemes, detect_broker
from ._check import LONG_TASK_SECONDS, ConfigWarning, WarningCode, check
from ._names import KIT_PREFIX, is_known_setting, validate_setting_names
from ._presets import (
    ETA_HORIZON_SETTING,
    PRESET_SETTING,
    REDIS_DEFAULT_VISIBILITY_TIMEOUT,
    Preset,
    development,
    low_latency,
    production,
    redis_visibility_timeout,
    reliable,
    testing,
)
from ._routing import QueuesSpec, RateLimits

__all__ = [
    "ETA_HORIZON_SETTING",
    "KIT_PREFIX",
    "LONG_TASK_SECONDS",
    "PRESETS",
    "PRESET_SETTING",
    "REDIS_DEFAULT_VISIBILITY_TIMEOUT",
    "Broker",
    "ConfigWarning",
    "Preset",
    "QueuesSpec",
    "RateLimits",
    "WarningCode",
    "broker_schemes",
    "check",
    "detect_broker",
    "development",
    "is_known_setting",
    "low_latency",
    "periodic",
    "production",
    "redis_visibility_timeout",
    "reliable",
    "testing",
    "validate_setting_names",
]

#: Each :class:`Preset` and the function that builds it.
PRESETS = {
    Preset.PRODUCTION: production,
    Preset.RELIABLE: reliable,
    Preset.LOW_LATENCY: low_latency,
    Preset.DEVELOPMENT: development,
    Preset.TESTING: testing,
}
