"""The rate limit per sink: at most ``per_minute`` alerts a minute, across all incidents.

It is a token bucket per sink -- full at the start (``per_minute`` tokens, so a burst of
distinct incidents gets through), refilled at ``per_minute / 60`` tokens a second.
:class:`RedisRateLimit` keeps the buckets in Redis and takes a token with one Lua script
(atomic, on Redis's clock), so every pool process on every host shares one limit per
sink. When Redis cannot be reached it falls back to the per-process buckets of
:class:`LocalRateLimit` (the default without Redis) and tries Redis again after
``retry_after`` seconds, so an outage costs one slow call per interval, not one per alert.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ._throttle import redis_client

__all__ = ["LocalRateLimit", "RateLimit", "RedisRateLimit"]

logger = logging.getLogger("celery_kit.alerts")


class RateLimit(Protocol):
    def take(self, sink: str) -> bool:
        """True: ``sink`` may send one more alert now. False: over its limit."""
        ...


class _TokenBucket:
    def __init__(self, per_minute: float) -> None:
        self.capacity = max(1.0, per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class LocalRateLimit:
    """Per-process token buckets: each process has its own limit per sink.

    Only the delivery thread takes tokens, so no lock is needed.
    """

    def __init__(self, per_minute: float) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, _TokenBucket] = {}

    def take(self, sink: str) -> bool:
        bucket = self._buckets.get(sink)
        if bucket is None:
            bucket = self._buckets[sink] = _TokenBucket(self.per_minute)
        return bucket.take()


# KEYS[1]: the sink's bucket (a hash: tokens, at). ARGV: capacity, refill rate per second.
# Redis's own clock (TIME), so hosts with skewed clocks share one bucket correctly.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
local ttl = 3600
if rate > 0 then
  ttl = math.ceil(capacity / rate) + 60
end
redis.call('EXPIRE', KEYS[1], ttl)
return taken
"""


class RedisRateLimit:
    """Token buckets in Redis, one per sink, shared by every process and host.

    Args:
        client: a ``redis.Redis`` client.
        per_minute: alerts a minute per sink (also the burst a full bucket allows).
        prefix: key prefix; a sink's bucket is ``{prefix}:rate:{sink}:tokens``.
        retry_after: seconds to limit per process after Redis failed, before trying it again.
    """

    def __init__(
        self,
        client: Any,
        per_minute: float,
        *,
        prefix: str = "celery_kit:alerts",
        retry_after: float = 30.0,
    ) -> None:
        self.client = client
        self.per_minute = per_minute
        self.prefix = prefix
        self.retry_after = retry_after
        self._capacity = max(1.0, per_minute)
        self._rate = per_minute / 60.0
        self._script = client.register_script(_TAKE)
        self._fallback = LocalRateLimit(per_minute)
        self._degraded = False
        self._retry_at = 0.0

    @classmethod
    def from_url(cls, url: str, per_minute: float, *, prefix: str = "celery_kit:alerts") -> RedisRateLimit:
        return cls(redis_client(url), per_minute, prefix=prefix)

    def key(self, sink: str) -> str:
        return f"{self.prefix}:rate:{sink}:tokens"

    def take(self, sink: str) -> bool:
        if self._degraded and time.monotonic() < self._retry_at:
            return self._fallback.take(sink)
        try:
            taken = self._script(keys=[self.key(sink)], args=[self._capacity, self._rate])
        except Exception:
            if not self._degraded:
                logger.warning(
                    "shared alert rate limit unavailable (Redis); limiting per process meanwhile",
                    exc_info=True,
                )
                self._degraded = True
            self._retry_at = time.monotonic() + self.retry_after
            return self._fallback.take(sink)
        if self._degraded:
            logger.info("shared alert rate limit reachable again")
            self._degraded = False
        self._retry_at = 0.0
        return bool(taken)
