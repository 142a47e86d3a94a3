"""Alerts on what a human must act on, once: final failures, timeouts, lost workers,
invalid payloads -- throttled into one alert plus a digest per incident, delivered off the
task's path, with payloads left out (or masked) by default.

Retries never alert. Hard time limits and lost pool processes are reported by the worker's
main process. See :class:`Alerting` for the options and :mod:`celery_kit.alerts._throttle`
for how windows and digests work.
"""

from __future__ import annotations

from ._delivery import AlertDelivery
from ._model import Alert, AlertKind, redact
from ._observer import Alerting, AlertObserver, install, sinks_from_urls
from ._ratelimit import LocalRateLimit, RateLimit, RedisRateLimit
from ._sinks import Alerter, CallbackSink, LogSink, SmtpSink, WebhookSink
from ._throttle import LocalThrottle, RedisThrottle, Throttle

__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertKind",
    "AlertObserver",
    "Alerter",
    "Alerting",
    "CallbackSink",
    "LocalRateLimit",
    "LocalThrottle",
    "LogSink",
    "RateLimit",
    "RedisRateLimit",
    "RedisThrottle",
    "SmtpSink",
    "Throttle",
    "WebhookSink",
    "install",
    "redact",
    "sinks_from_urls",
]
