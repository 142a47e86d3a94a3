"""Task events in, alerts out: only what a human must act on, built off the task's path."""

from __future__ import annotations

import atexit
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr

from .._errors import ConfigurationError
from .._events import FailureKind, TaskEvent
from .._observer import Observer
from .._payload import dump_masked
from ._delivery import AlertDelivery, ResultCallback
from ._model import Alert, AlertKind, redact
from ._ratelimit import LocalRateLimit, RateLimit, RedisRateLimit
from ._sinks import Alerter, LogSink, SmtpSink, WebhookSink
from ._throttle import LocalThrottle, RedisThrottle, Throttle

__all__ = ["AlertObserver", "Alerting", "install", "sinks_from_urls"]

_MAX_MESSAGE = 500


@dataclass(frozen=True)
class Alerting:
    """How an app alerts.

    Args:
        sinks: where alerts go (several at once).
        window: seconds of the throttle window; later occurrences become one digest.
        max_backoff: how many times longer the window may grow during a storm.
        redis_url: share the throttle state and the rate limits through Redis across pool
            processes and hosts (otherwise each process throttles and limits on its own).
        link_template: e.g. ``"https://flower.example.com/task/{task_id}"``; any alert
            field may be used.
        rate_limit_per_minute: per sink, across all incidents (and, with ``redis_url``,
            across all processes and hosts sharing ``redis_prefix``).
    """

    sinks: Sequence[Alerter] = field(default_factory=lambda: (LogSink(),))
    window: float = 600.0
    max_backoff: int = 8
    redis_url: str | None = None
    link_template: str | None = None
    rate_limit_per_minute: float = 30.0
    queue_size: int = 1000
    #: Key prefix of the shared throttle state in Redis.
    redis_prefix: str = "celery_kit:alerts"

    def throttle(self) -> Throttle:
        if self.redis_url:
            return RedisThrottle.from_url(
                self.redis_url, window=self.window, max_backoff=self.max_backoff, prefix=self.redis_prefix
            )
        return LocalThrottle(window=self.window, max_backoff=self.max_backoff)

    def rate_limit(self) -> RateLimit:
        if self.redis_url:
            return RedisRateLimit.from_url(
                self.redis_url, self.rate_limit_per_minute, prefix=self.redis_prefix
            )
        return LocalRateLimit(self.rate_limit_per_minute)


def sinks_from_urls(urls: Sequence[str | SecretStr]) -> list[Alerter]:
    """Sinks from configuration strings (``CELERY_KIT_ALERT_SINKS``).

    ``log``; ``https://...`` (JSON webhook); ``slack+https://...`` (Slack-compatible
    webhook); ``smtp://user:password@host:port/?from=a@x&to=b@x,c@x`` (``smtps`` for TLS
    from the start is not supported; STARTTLS is used unless ``starttls=0``).
    """
    sinks: list[Alerter] = []
    for raw in urls:
        url = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
        scheme = url.split(":", 1)[0].lower()
        if url.strip().lower() == "log":
            sinks.append(LogSink())
        elif scheme in ("http", "https"):
            sinks.append(WebhookSink(url))
        elif scheme in ("slack+http", "slack+https"):
            sinks.append(WebhookSink(url.split("+", 1)[1], slack=True))
        elif scheme == "smtp":
            parts = urlsplit(url)
            query = parse_qs(parts.query)
            recipients = [r for value in query.get("to", []) for r in value.split(",") if r]
            if not parts.hostname or not recipients or not query.get("from"):
                raise ConfigurationError(
                    "an smtp:// alert sink needs a host, ?from=sender and ?to=recipient[,recipient]"
                )
            sinks.append(
                SmtpSink(
                    parts.hostname,
                    port=parts.port or 587,
                    sender=query["from"][0],
                    recipients=recipients,
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password else None,
                    starttls=query.get("starttls", ["1"])[0] not in ("0", "false", "no"),
                )
            )
        else:
            raise ConfigurationError(
                f"unknown alert sink {scheme!r}: use log, https://..., slack+https://... or smtp://..."
            )
    return sinks


_KINDS = {
    FailureKind.INVALID_PAYLOAD: AlertKind.INVALID_PAYLOAD,
    FailureKind.WORKER_LOST: AlertKind.WORKER_LOST,
}


def _kind_of(event: TaskEvent) -> AlertKind:
    if event.kind is FailureKind.TIMEOUT:
        return AlertKind.HARD_TIMEOUT if event.detail == "hard" else AlertKind.SOFT_TIMEOUT
    return _KINDS.get(event.kind, AlertKind.FINAL_FAILURE) if event.kind else AlertKind.FINAL_FAILURE


#: Longest identifier (task name, id, queue, host) an alert carries.
_MAX_TEXT = 200


def _text(value: Any) -> str | None:
    """A string, clipped; anything else (a list where an id belongs) is dropped."""
    if not isinstance(value, str):
        return None
    return value if len(value) <= _MAX_TEXT else f"{value[:_MAX_TEXT]}..."


def _count(value: Any) -> int:
    """The retry count: a whole number, else 0 (``retries="abc"`` in a message's headers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return max(value, 0)
    if isinstance(value, str) and value.isdigit() and len(value) < 10:
        return int(value)
    return 0


def _message(exc: BaseException | None) -> str | None:
    if exc is None:
        return None
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still alerts
        text = f"<{type(exc).__name__}: its message could not be read>"
    return text[:_MAX_MESSAGE]


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return ""


class AlertObserver(Observer):
    """Turns final failures into alerts and hands them to the delivery thread.

    The delivery thread starts with the first alert in a pool process, and when the
    worker is ready in its main process, which outlives pool processes and flushes the
    digests of a shared throttle; it is closed (pending alerts flushed) when the process
    shuts down.
    """

    def __init__(self, delivery: AlertDelivery, *, link_template: str | None = None) -> None:
        self.delivery = delivery
        self.link_template = link_template
        self.hostname = socket.gethostname()

    def on_failed(self, event: TaskEvent) -> None:
        if not event.final:
            return  # retries never alert; Retry/Ignore/Reject are control flow
        now = datetime.now(timezone.utc)
        exc = event.exception
        # Every field below may come from a message's headers, which anyone who can
        # publish chooses: a value of the wrong type is coerced or dropped, never allowed
        # to make the model refuse the alert (and the dispatcher swallow it).
        alert = Alert(
            kind=_kind_of(event),
            task_name=_text(event.task_name) or "unknown",
            task_id=_text(event.task_id),
            root_id=_text(event.root_id),
            queue=_text(event.queue),
            retries=_count(event.retries),
            exception_type=type(exc).__name__ if exc is not None else None,
            exception_message=_message(exc),
            reason=_text(event.reason) or "",
            hostname=_text(event.hostname) or self.hostname,
            first_seen=now,
            last_seen=now,
            payload=self._payload(event),
        )
        if self.link_template:
            alert.link = self.link_template.format_map(_Fields(alert.model_dump(mode="json")))
        self.delivery.submit(alert)

    @staticmethod
    def _payload(event: TaskEvent) -> Any:
        if not getattr(event.task, "alert_payload", False) or event.payload is None:
            return None
        return redact(dump_masked(event.payload))

    def on_worker_ready(self, worker: Any) -> None:
        self.delivery.start()

    def on_process_shutdown(self) -> None:
        self.delivery.close()

    def on_worker_shutdown(self, worker: Any) -> None:
        self.delivery.close()

    def close(self) -> None:
        """Flush and stop the delivery (``uninstrument``, interpreter exit)."""
        atexit.unregister(self.delivery.close)
        self.delivery.close()


def install(app: Any, alerting: Alerting, *, on_result: ResultCallback | None = None) -> AlertObserver:
    """Wire alerting into ``app``; used by :func:`celery_kit.instrument`."""
    delivery = AlertDelivery(
        alerting.sinks,
        alerting.throttle(),
        rate_limit_per_minute=alerting.rate_limit_per_minute,
        rate_limit=alerting.rate_limit(),
        queue_size=alerting.queue_size,
        on_result=on_result,
        # With a shared throttle another process sends the digest when the window ends.
        flush_on_close=not alerting.redis_url,
    )
    atexit.register(delivery.close)  # pending alerts of a producer or an eager run
    return AlertObserver(delivery, link_template=alerting.link_template)
