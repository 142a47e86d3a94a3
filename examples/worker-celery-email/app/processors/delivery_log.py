"""The delivery log: per-day counters of delivered emails, in Redis.

The email task records each delivery (one ``HINCRBY`` per email); the daily report reads
a day's counters and the weekly cleanup deletes old days. Sends interrupted by the soft
time limit are *parked* here too, for someone to check whether the relay got them.

Keys (``<prefix>`` is ``EMAIL_WORKER_KEY_PREFIX``)::

    <prefix>:deliveries:<YYYY-MM-DD>   hash: recipient domain -> emails delivered
    <prefix>:unknown-delivery          list: JSON records of sends cut short by a timeout
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from typing import Any

import redis

__all__ = ["DeliveryLog"]


class DeliveryLog:
    """Delivery counters and parked sends under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str) -> DeliveryLog:
        # Connects lazily, and redis-py's pool reconnects in each forked pool process.
        return cls(redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), prefix)

    def key(self, day: date) -> str:
        return f"{self.prefix}:deliveries:{day.isoformat()}"

    @property
    def parked_key(self) -> str:
        return f"{self.prefix}:unknown-delivery"

    def record(self, recipient: str, day: date) -> None:
        """Count one email delivered to ``recipient`` on ``day``."""
        domain = recipient.rpartition("@")[2].lower()
        self.client.hincrby(self.key(day), domain, 1)

    def counts(self, day: date) -> dict[str, int]:
        """Emails delivered on ``day``, by recipient domain."""
        raw: Mapping[Any, Any] = self.client.hgetall(self.key(day))
        return {_text(domain): int(count) for domain, count in raw.items()}

    def days(self) -> list[date]:
        """The days that have counters."""
        found = []
        for key in self.client.scan_iter(match=f"{self.prefix}:deliveries:*", count=500):
            try:
                found.append(date.fromisoformat(_text(key).rpartition(":")[2]))
            except ValueError:
                continue  # not ours
        return sorted(found)

    def forget_before(self, cutoff: date) -> int:
        """Delete the counters of days before ``cutoff``; return how many days went."""
        old = [self.key(day) for day in self.days() if day < cutoff]
        if old:
            self.client.delete(*old)
        return len(old)

    def park(self, record: Mapping[str, Any]) -> None:
        """Keep a record of a send whose outcome is unknown."""
        self.client.rpush(self.parked_key, json.dumps(dict(record), default=str))

    def parked(self) -> list[dict[str, Any]]:
        items: list[Any] = self.client.lrange(self.parked_key, 0, -1)
        return [dict(json.loads(item)) for item in items]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
