"""The Redis store: a hash of entries, a sorted set by time, every change one Lua script.

Keys (``<prefix>`` is ``celery_kit.dlq.<app.main>`` unless set):

* ``<prefix>:entries`` -- hash, entry id -> entry JSON;
* ``<prefix>:by_time`` -- sorted set, entry id -> stored-at time (retention order);
* ``<prefix>:claims`` -- hash, entry id -> ``"<token>|<expires at>"`` of a replay in flight;
* ``<prefix>:counts`` / ``<prefix>:dropped`` -- hashes, task -> entries held / dropped.

All in one hash slot (``{<prefix>}``), so a Redis Cluster runs the scripts too. A script
runs atomically, so a store and its retention, a replay's claim and its settlement never
interleave with another process's: two replays cannot both claim an entry, and a removal
after the publish was confirmed removes only what that replay claimed.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from .._errors import ConfigurationError
from ._backend import Claim, Counts, PutResult
from ._entry import DeadLetter

__all__ = ["RedisBackend"]


def _script(name: str) -> str:
    folder = resources.files("celery_kit").joinpath("deadletter", "_lua")
    common = folder.joinpath("common.lua").read_text("utf-8")
    return common + "\n" + folder.joinpath(f"{name}.lua").read_text("utf-8")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, prefix: str, *, timeout: float = 5.0) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                f"dead letters on Redis need redis-py ({exc}): pip install 'celery-kit[redis]'."
            ) from exc
        self._redis = redis
        self.url = url
        self.timeout = timeout
        from .._redact import redact_url

        self.location = f"{redact_url(url)} {prefix}"
        tag = "{" + prefix + "}"
        self.keys = [f"{tag}:{part}" for part in ("entries", "by_time", "claims", "counts", "dropped")]
        self._client: Any = None
        self._pid = 0
        self._scripts: dict[str, Any] = {}

    def _connect(self) -> Any:
        # One client per process: a pool process must not share its parent's sockets.
        if self._client is None or self._pid != os.getpid():
            self._client = self._redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            self._pid = os.getpid()
            self._scripts = {
                name: self._client.register_script(_script(name))
                for name in ("put", "trim", "claim", "settle", "purge")
            }
        return self._client

    def _run(self, name: str, *args: Any) -> Any:
        self._connect()
        return self._scripts[name](keys=self.keys, args=list(args))

    def put(self, entry: DeadLetter, now: float, max_entries: int, max_age: float) -> PutResult:
        result = self._run(
            "put", entry.id, entry.model_dump_json(), entry.task_name, now, now - max_age, max_entries
        )
        return PutResult(new=bool(int(result[0])), dropped=[_text(t) for t in result[1:]])

    def trim(self, now: float, max_entries: int, max_age: float) -> list[str]:
        return [_text(t) for t in self._run("trim", now - max_age, max_entries)]

    def entries(self) -> list[DeadLetter]:
        client = self._connect()
        ids = client.zrange(self.keys[1], 0, -1)
        if not ids:
            return []
        raws = client.hmget(self.keys[0], ids)
        return [DeadLetter.model_validate_json(raw) for raw in raws if raw is not None]

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self._connect().hget(self.keys[0], entry_id)
        return None if raw is None else DeadLetter.model_validate_json(raw)

    def claim(self, entry_id: str, token: str, now: float, timeout: float) -> Claim | None:
        result = self._run("claim", entry_id, token, now, now + timeout)
        status = int(result[0])
        if status == 0:
            return None
        if status == 1:
            return Claim(None, holder=_text(result[1]))
        return Claim(DeadLetter.model_validate_json(result[1]))

    def _settle(self, entry_id: str, token: str, action: str, *extra: Any) -> bool:
        return bool(int(self._run("settle", entry_id, token, 0, action, *extra)))

    def release(self, entry_id: str, token: str) -> bool:
        return self._settle(entry_id, token, "release")

    def keep(self, entry: DeadLetter, token: str) -> bool:
        return self._settle(entry.id, token, "keep", entry.model_dump_json())

    def remove(self, entry_id: str, token: str) -> bool:
        return self._settle(entry_id, token, "remove")

    def purge(self, ids: list[str] | None, before: float | None) -> int:
        if ids is not None:
            return int(self._run("purge", "ids", *ids)) if ids else 0
        if before is not None:
            return int(self._run("purge", "before", before))
        return int(self._run("purge", "all"))

    def counts(self) -> Counts:
        client = self._connect()
        by_task = {_text(k): int(v) for k, v in client.hgetall(self.keys[3]).items() if int(v) > 0}
        dropped = {_text(k): int(v) for k, v in client.hgetall(self.keys[4]).items()}
        return Counts(by_task, dropped)

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
