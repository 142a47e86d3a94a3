"""One alert per incident: the first occurrence in a window is sent, the rest become a digest.

A fingerprint -- ``(task, kind, exception class)`` -- identifies an incident. The first
occurrence opens a window and is sent at once; later ones in the window are counted; when
the window ends, one digest says how many more there were. A window that ends with a
digest doubles the next one (up to ``max_backoff`` times), so a storm that goes on for an
hour sends a handful of messages, not thousands.

An occurrence that arrives after a window ended but before its digest was taken is
counted into that digest (it goes out within a flush interval); the next window opens
only once the digest is taken, so it is the longer one and a digest is never held back
or merged into the next window's.

:class:`RedisThrottle` keeps that state in Redis and changes it with Lua scripts (each
atomic), so every pool process on every host shares one window per incident.
:class:`LocalThrottle` keeps it in the process, the fallback without Redis.
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


def redis_client(url: str) -> Any:
    """A Redis client for the alerting state, with short timeouts (delivery-thread only)."""
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from .._errors import ConfigurationError

        raise ConfigurationError(
            "shared alert throttling needs the redis client: pip install redis "
            "(or celery[redis]), or drop the Redis URL to throttle per process."
        ) from exc
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


# Keys of one incident: KEYS[1] win (exists while the window is open; its length in ms),
# [2] count, [3] first, [4] last (the occurrences held back for the digest), [5] len (the
# length in ms of the window they belong to), [6] storms (digests in a row).

# ARGV: base window (ms), max backoff, first_seen, the alert as JSON.
# Returns 1: send the alert now (it opened a window); 0: counted for the digest.
_ADMIT = """
local length = tonumber(redis.call('GET', KEYS[1]))
if not length then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    local storms = tonumber(redis.call('GET', KEYS[6])) or 0
    local factor = math.min(2 ^ math.min(storms, 30), tonumber(ARGV[2]))
    length = math.max(1, math.floor(tonumber(ARGV[1]) * factor))
    redis.call('SET', KEYS[1], length, 'PX', length)
    return 1
  end
  -- The window ended but its digest was not taken yet: this occurrence belongs to it.
  length = tonumber(redis.call('GET', KEYS[5])) or tonumber(ARGV[1])
end
local keep = length * 4
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', keep)
redis.call('SET', KEYS[4], ARGV[4], 'PX', keep)
redis.call('SET', KEYS[5], length, 'PX', keep)
return 0
"""

# ARGV: force ('1' takes the digest of an open window too), TTL of the storms counter (s).
# Returns nil (nothing due) or {count, first, last, len}, taking them: one process does.
_TAKE_DIGEST = """
if ARGV[1] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  return nil
end
local count = redis.call('GETDEL', KEYS[2])
if not count then
  return nil
end
local first = redis.call('GETDEL', KEYS[3])
local last = redis.call('GETDEL', KEYS[4])
local length = redis.call('GETDEL', KEYS[5])
redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], ARGV[2])
return {count, first, last, length}
"""

_PARTS = ("win", "count", "first", "last", "len", "storms")


def _text(value: Any) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisThrottle:
    """Throttle state shared through Redis by every process and host."""

    def __init__(
        self, client: Any, *, window: float = 600.0, max_backoff: int = 8, prefix: str = "celery_kit:alerts"
    ) -> None:
        self.client = client
        self.window = window
        self.max_backoff = max_backoff
        self.prefix = prefix
        self._admit = client.register_script(_ADMIT)
        self._take = client.register_script(_TAKE_DIGEST)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisThrottle:
        return cls(redis_client(url), **options)

    def _key(self, fingerprint: str) -> str:
        digest = hashlib.sha1(fingerprint.encode(), usedforsecurity=False).hexdigest()[:16]
        return f"{self.prefix}:{digest}"

    @staticmethod
    def _keys(key: str) -> list[str]:
        return [f"{key}:{part}" for part in _PARTS]

    def admit(self, alert: Alert) -> bool:
        opened = self._admit(
            keys=self._keys(self._key(alert.fingerprint)),
            args=[
                max(1, int(self.window * 1000)),
                self.max_backoff,
                alert.first_seen.isoformat(),
                alert.model_dump_json(),
            ],
        )
        return bool(opened)

    def due_digests(self, *, force: bool = False) -> list[Alert]:
        digests = []
        storms_ttl = int(self.window * self.max_backoff * 4) + 1
        for raw in self.client.scan_iter(match=f"{self.prefix}:*:count", count=500):
            count_key = _text(raw)
            taken = self._take(
                keys=self._keys(count_key[: -len(":count")]), args=["1" if force else "0", storms_ttl]
            )
            if not taken:
                continue
            count, first, last, length = taken
            if last is None:
                continue
            alert = Alert.model_validate_json(_text(last))
            first_seen = datetime.fromisoformat(_text(first)) if first else None
            seconds = int(length) / 1000 if length else self.window
            digests.append(_digest(alert, int(count), first_seen, seconds))
        return digests


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
