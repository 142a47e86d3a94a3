"""One alert per incident: the first occurrence in a window is sent, the rest become a digest.

A fingerprint -- ``(task, kind, exception class)`` -- identifies an incident. The first
occurrence opens a window and is sent at once; later ones in the window are counted; when
the window ends, one digest says how many more there were. A window that ends with a
digest doubles the next one (up to ``max_backoff`` times), so a storm that goes on for an
hour sends a handful of messages, not thousands.

:class:`RedisThrottle` keeps that state in Redis with atomic commands (``SET NX PX``,
``INCR``, ``GETDEL``), so every pool process on every host shares one window per
incident. :class:`LocalThrottle` keeps it in the process, the fallback without Redis.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from ._model import Alert

__all__ = ["LocalThrottle", "RedisThrottle", "Throttle"]


class Throttle(Protocol):
    def admit(self, alert: Alert) -> bool:
        """True: send ``alert`` now. False: it was counted for the window's digest."""
        ...

    def due_digests(self, *, force: bool = False) -> list[Alert]:
        """Digests of windows that ended (all pending ones with ``force``)."""
        ...


def _window_length(base: float, storms: int, max_backoff: int) -> float:
    return float(base * min(2 ** min(storms, 30), max_backoff))


@dataclass
class _Window:
    ends: float
    length: float
    count: int = 0
    first_counted: datetime | None = None
    last: Alert | None = None


@dataclass
class LocalThrottle:
    """Per-process throttle state."""

    window: float = 600.0
    max_backoff: int = 8
    _windows: dict[str, _Window] = field(default_factory=dict)
    _storms: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, alert: Alert) -> bool:
        now = time.monotonic()
        with self._lock:
            current = self._windows.get(alert.fingerprint)
            if current is not None and now >= current.ends and current.count == 0:
                del self._windows[alert.fingerprint]
                self._storms.pop(alert.fingerprint, None)
                current = None
            if current is None:
                length = _window_length(self.window, self._storms.get(alert.fingerprint, 0), self.max_backoff)
                self._windows[alert.fingerprint] = _Window(now + length, length)
                return True
            current.count += 1
            current.first_counted = current.first_counted or alert.first_seen
            current.last = alert
            return False

    def due_digests(self, *, force: bool = False) -> list[Alert]:
        now = time.monotonic()
        digests = []
        with self._lock:
            for fingerprint, window in list(self._windows.items()):
                if not force and now < window.ends:
                    continue
                del self._windows[fingerprint]
                if window.count and window.last is not None:
                    digests.append(_digest(window.last, window.count, window.first_counted, window.length))
                    self._storms[fingerprint] = self._storms.get(fingerprint, 0) + 1
                else:
                    self._storms.pop(fingerprint, None)
        return digests


def _digest(last: Alert, count: int, first: datetime | None, length: float) -> Alert:
    return last.model_copy(
        update={
            "occurrences": count,
            "digest": True,
            "window_seconds": length,
            "first_seen": first or last.first_seen,
            "task_id": None,
            "root_id": None,
            "payload": None,
        }
    )


class RedisThrottle:
    """Throttle state shared through Redis by every process and host."""

    def __init__(
        self, client: Any, *, window: float = 600.0, max_backoff: int = 8, prefix: str = "celery_kit:alerts"
    ) -> None:
        self.client = client
        self.window = window
        self.max_backoff = max_backoff
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisThrottle:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            from .._errors import ConfigurationError

            raise ConfigurationError(
                "shared alert throttling needs the redis client: pip install redis "
                "(or celery[redis]), or drop the Redis URL to throttle per process."
            ) from exc
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), **options)

    def _key(self, fingerprint: str) -> str:
        digest = hashlib.sha1(fingerprint.encode(), usedforsecurity=False).hexdigest()[:16]
        return f"{self.prefix}:{digest}"

    def admit(self, alert: Alert) -> bool:
        key = self._key(alert.fingerprint)
        storms = int(self.client.get(f"{key}:storms") or 0)
        length = _window_length(self.window, storms, self.max_backoff)
        millis = max(1, int(length * 1000))
        if self.client.set(f"{key}:win", "1", nx=True, px=millis):
            return True
        keep = millis * 4
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(f"{key}:count")
            pipe.pexpire(f"{key}:count", keep)
            pipe.set(f"{key}:first", alert.first_seen.isoformat(), nx=True, px=keep)
            pipe.set(
                f"{key}:last", alert.model_copy(update={"window_seconds": length}).model_dump_json(), px=keep
            )
            pipe.execute()
        return False

    def due_digests(self, *, force: bool = False) -> list[Alert]:
        digests = []
        for raw in self.client.scan_iter(match=f"{self.prefix}:*:count", count=500):
            count_key = raw.decode() if isinstance(raw, bytes) else str(raw)
            key = count_key[: -len(":count")]
            if not force and self.client.exists(f"{key}:win"):
                continue
            count = self.client.getdel(count_key)  # atomic: one process takes the digest
            if not count:
                continue
            last = self.client.getdel(f"{key}:last")
            first = self.client.getdel(f"{key}:first")
            if last is None:
                continue
            alert = Alert.model_validate_json(last)
            first_seen = datetime.fromisoformat(first.decode()) if first else None
            digests.append(_digest(alert, int(count), first_seen, alert.window_seconds or self.window))
            storms_key = f"{key}:storms"
            with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(storms_key)
                pipe.expire(storms_key, int(self.window * self.max_backoff * 4) + 1)
                pipe.execute()
        return digests


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
