"""``DeadLetterStore``: list, show, replay, purge and count one app's dead letters."""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ._backend import Backend, PutResult
from ._config import StoreConfig, store_config
from ._entry import DeadLetter, DeadLetterStats

__all__ = ["DeadLetterStore", "ReplayResult"]

logger = logging.getLogger("celery_kit.deadletter")


@dataclass
class ReplayResult:
    """What :meth:`DeadLetterStore.replay` did with each id it was given."""

    #: Published (confirmed by the broker) and removed from the store.
    replayed: list[str] = field(default_factory=list)
    #: Left in the store, with the reason: it no longer validates, the task is unknown ...
    kept: dict[str, str] = field(default_factory=dict)
    #: Another replay holds it right now (it publishes it, not this one).
    busy: list[str] = field(default_factory=list)
    #: No such entry (replayed or purged already).
    missing: list[str] = field(default_factory=list)
    #: The publish failed; the entry stays, unclaimed, for a later replay.
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.kept or self.failed or self.missing or self.busy)


def _backend_for(config: StoreConfig) -> Backend:
    if config.backend == "redis":
        from ._redis import RedisBackend

        return RedisBackend(config.url, config.prefix)
    from ._amqp import StreamBackend

    return StreamBackend(config.url, config.prefix, max_age=config.max_age)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class DeadLetterStore:
    """One app's dead letters, on its broker (or the Redis of ``celery_kit_dead_letter_url``).

    ``list`` and ``get`` return entries with secrets masked (``reveal=True`` for the
    stored values); ``replay`` publishes the stored message itself.
    """

    def __init__(self, app: Any, config: StoreConfig, backend: Backend) -> None:
        self.app = app
        self.config = config
        self.backend = backend
        self._lock = threading.Lock()

    @classmethod
    def for_app(cls, app: Any) -> DeadLetterStore:
        """The store ``app``'s settings point at (see :mod:`celery_kit.deadletter`)."""
        config = store_config(app)
        return cls(app, config, _backend_for(config))

    def __enter__(self) -> DeadLetterStore:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    # -- writing (the capture observer) ------------------------------------------------------

    def put(self, entry: DeadLetter) -> PutResult:
        """Store ``entry`` (replacing one with its id), then apply retention."""
        with self._lock:
            return self.backend.put(entry, time.time(), self.config.max_entries, self.config.max_age)

    def trim(self) -> builtins.list[str]:
        """Apply retention now; returns the dropped entries' task names."""
        with self._lock:
            return self.backend.trim(time.time(), self.config.max_entries, self.config.max_age)

    # -- reading -----------------------------------------------------------------------------

    def _live(self) -> builtins.list[DeadLetter]:
        """Entries within the age limit (older ones go at the next write or trim)."""
        horizon = time.time() - self.config.max_age
        return [e for e in self.backend.entries() if e.stored_at.timestamp() >= horizon]

    def list(
        self, task: str | None = None, limit: int | None = 100, *, reveal: bool = False
    ) -> builtins.list[DeadLetter]:
        """Entries, newest first; only ``task``'s if given; at most ``limit`` (``None``: all)."""
        entries = [e for e in reversed(self._live()) if task is None or e.task_name == task]
        if limit is not None:
            entries = entries[:limit]
        return entries if reveal else [e.masked(self.app) for e in entries]

    def get(self, entry_id: str, *, reveal: bool = False) -> DeadLetter | None:
        entry = self.backend.get(entry_id)
        if entry is None:
            return None
        return entry if reveal else entry.masked(self.app)

    def stats(self) -> DeadLetterStats:
        counts = self.backend.counts()
        entries = self._live()
        return DeadLetterStats(
            backend=self.backend.name,
            location=self.backend.location,
            total=sum(counts.by_task.values()),
            by_task=dict(sorted(counts.by_task.items())),
            dropped=dict(sorted(counts.dropped.items())),
            oldest=entries[0].stored_at if entries else None,
            newest=entries[-1].stored_at if entries else None,
            max_entries=self.config.max_entries,
            max_age=self.config.max_age,
        )

    # -- replay and purge --------------------------------------------------------------------

    def ids(self, task: str | None = None) -> builtins.list[str]:
        """Every entry's id (oldest first), only ``task``'s if given."""
        return [e.id for e in self._live() if task is None or e.task_name == task]

    def replay(self, ids: Iterable[str]) -> ReplayResult:
        """Publish each entry again and remove it once the broker confirmed it.

        An entry is claimed first (atomically: of two operators replaying at once, one
        publishes it and the other reports it ``busy``); one that no longer fits the
        task's current signature stays, with the reason (``kept``).
        """
        from ._replay import publish, replay_connection, replay_problem

        self.app.loader.import_default_modules()
        result = ReplayResult()
        connection = None
        try:
            for entry_id in dict.fromkeys(ids):
                token = uuid.uuid4().hex
                claim = self.backend.claim(entry_id, token, time.time(), self.config.claim_timeout)
                if claim is None:
                    result.missing.append(entry_id)
                    continue
                entry = claim.entry
                if entry is None:
                    result.busy.append(entry_id)
                    continue
                problem = replay_problem(self.app, entry)
                if problem is not None:
                    self.backend.keep(entry.model_copy(update={"replay_error": problem}), token)
                    result.kept[entry_id] = problem
                    continue
                try:
                    if connection is None:
                        connection = replay_connection(self.app)
                    publish(self.app, connection, entry)
                except Exception as exc:
                    self.backend.release(entry_id, token)
                    result.failed[entry_id] = f"{type(exc).__name__}: {exc}"
                    if connection is not None:
                        connection.release()  # type: ignore[no-untyped-call]
                        connection = None
                    continue
                self.backend.remove(entry_id, token)
                result.replayed.append(entry_id)
        finally:
            if connection is not None:
                connection.release()  # type: ignore[no-untyped-call]
        return result

    def purge(
        self,
        ids: Iterable[str] | None = None,
        *,
        older_than: float | timedelta | None = None,
        all: bool = False,
    ) -> int:
        """Remove entries for good: these ``ids``, those stored more than ``older_than``
        (seconds or a ``timedelta``) ago, or ``all=True``. Returns how many went."""
        if ids is not None:
            return self.backend.purge(builtins.list(dict.fromkeys(ids)), None)
        if older_than is not None:
            return self.backend.purge(None, time.time() - _seconds(older_than))
        if all:
            return self.backend.purge(None, None)
        raise ValueError("purge() needs ids, older_than= or all=True")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


DeadLetterStore.__module__ = "celery_kit.deadletter"
ReplayResult.__module__ = "celery_kit.deadletter"
