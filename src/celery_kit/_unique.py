"""Payload-keyed uniqueness: at most one task per key, safe under kills, retries and redelivery.

``@validated_task(app, unique=Unique(on=("user_id",), ttl=600))`` keys a task on fields of
its validated payload. The lock lives in Redis (the broker when it is Redis, else the
``celery_kit_unique_url`` setting); its value is the owner, ``"<task id>|<token>"``, with a
random token per publish, so a late release or renewal never touches a newer holder's lock
(all four operations are check-and-set Lua scripts in ``_unique_lua/``). This module is
the configuration half, importable without redis-py; ``_unique_lock`` is the Redis half.

The life of a lock, and why each step is where it is (round trips waited for: ``queued``
1 on publish, 0 at start, 1 at finish; ``running`` 0, 1, 1):

* **publish** (``mode="queued"``): one script call takes the lock for ``ttl`` before the
  message is sent -- a message cannot be in the queue without its lock -- and a failed
  publish releases it. The key and token travel in the ``celery_kit_unique`` header, so the
  worker, a retry and a redelivery all use the caller's key; so does ``until``, the
  publish time plus ``ttl`` (read before the lock is taken: the lock outlives it).
  ``mode="running"`` publishes with the header only, no Redis call.
* **start, fast path** (``queued``, first attempt, not redelivered, a ``lease`` or more
  before ``until``): the message still holds the lock its publish took -- only its owner
  can shorten or free it -- so nothing needs checking. The lease that bounds a kill is
  written to a connection of its own before the body runs, and its reply is left unread:
  once written, Redis applies it even if the process dies the next instant.
* **start, checked** (``running``, retries, redeliveries, messages published around the
  kit, messages that waited nearly ``ttl``): one script call claims the lock for a
  ``lease`` when it is free or already this message's, and refuses to run a message whose
  key another task holds.
* **running**: a daemon thread in the process running the task renews every lease a
  third of it before it runs out. It lives in the pool process, not the worker's main
  process: when the pool process is killed (``kill -9``, OOM, hard time limit) its
  renewals stop with it and the lock expires within one lease, with no signal that must
  arrive first; the main process would learn of a start only after a message hop, and
  would keep renewing for a hung child. So after a kill the key is free within ``lease``.
* **finish**: one round trip -- a retry extends the lock to ``ttl`` again (the retry
  message carries the same task id and token and claims it back); every other outcome
  releases it. On the fast path the finish goes on the lease's connection and both
  replies are read together; a lease that found the lock gone is logged. A message
  revoked or expired before it ran, or refused before any task ran (``task_rejected``),
  is released from the worker's main process; worker loss and hard time limits leave it
  to the lease.

docs/uniqueness.md argues the choices (and the options weighed and not taken).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ConfigurationError

__all__ = ["UNIQUE_HEADER", "UNIQUE_URL_SETTING", "Unique", "bind_guard", "guard_run"]

#: Message header carrying ``{"key": ..., "token": ...}`` from the caller to the worker.
UNIQUE_HEADER = "celery_kit_unique"
#: App setting: the Redis URL of the lock store when the broker is not Redis.
UNIQUE_URL_SETTING = "celery_kit_unique_url"


@dataclass(frozen=True)
class Unique:
    """How a task is made unique: on which payload fields, for how long, and what a duplicate gets.

    Args:
        on: payload field names (``"user_id"``, dotted paths into a model such as
            ``"order.id"``), or a callable of the validated payload (the model, or a dict of
            the validated arguments) returning a string.
        ttl: seconds a lock may live at most: the longest a message may wait in the queue
            (``mode="queued"``) and the longest a retry may wait for its next attempt.
        mode: ``"queued"`` -- at most one message per key from publish to the end of its
            run; ``"running"`` -- any number queued, at most one running per key.
        on_duplicate: ``"raise"`` -- :class:`~celery_kit.DuplicateTaskError` (in the caller;
            on the worker, the attempt fails with it); ``"skip"`` -- the caller gets the
            existing task's ``AsyncResult`` and nothing is published (on the worker, the
            message is dropped as Celery's ``Ignore`` drops it).
        lease: seconds a running task's lock outlives its last renewal: the bound on how
            long a killed worker blocks the key. Renewed every ``lease / 3``.
        url: Redis URL of the lock store; default: the app setting ``celery_kit_unique_url``,
            else the broker when it is Redis.
    """

    on: tuple[str, ...] | Callable[[Any], str]
    ttl: float = 3600.0
    mode: Literal["queued", "running"] = "queued"
    on_duplicate: Literal["raise", "skip"] = "raise"
    lease: float = 30.0
    url: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.on, str):
            object.__setattr__(self, "on", (self.on,))
        if not callable(self.on):
            fields = tuple(self.on)
            if not fields or not all(isinstance(f, str) and f and "" not in f.split(".") for f in fields):
                raise ConfigurationError(
                    f"Unique(on={self.on!r}): give payload field names (dotted paths allowed) "
                    "or a callable of the payload returning a string."
                )
            object.__setattr__(self, "on", fields)
        if self.mode not in ("queued", "running"):
            raise ConfigurationError(f"Unique(mode={self.mode!r}): use 'queued' or 'running'.")
        if self.on_duplicate not in ("raise", "skip"):
            raise ConfigurationError(f"Unique(on_duplicate={self.on_duplicate!r}): use 'raise' or 'skip'.")
        for name in ("ttl", "lease"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"Unique({name}={value!r}): give a positive number of seconds.")
        if self.lease > self.ttl:
            raise ConfigurationError(
                f"Unique(lease={self.lease}, ttl={self.ttl}): the lease bounds a killed worker's "
                "lock and must not exceed ttl; lower the lease."
            )


Unique.__module__ = "celery_kit"


def lock_store_url(unique: Unique, conf: Any, task_name: str) -> str:
    """Where the locks live: ``Unique(url=)``, the setting, or a Redis broker; else refuse."""
    url = unique.url or conf.get(UNIQUE_URL_SETTING)
    if url:
        return str(url)
    broker = conf.broker_url or ""
    first = (broker[0] if isinstance(broker, (list, tuple)) and broker else str(broker)).split(";")[0]
    if first.startswith(("redis://", "rediss://", "unix://")):
        return first
    raise ConfigurationError(
        f"task {task_name!r} is unique, and its locks need Redis; the broker "
        f"({first.split('://')[0] or 'none'}) is not Redis. Set app.conf.{UNIQUE_URL_SETTING} = "
        "'redis://host:6379/0' (or Unique(url=...))."
    )


def _lock_module() -> Any:
    """The Redis half (``_unique_lock``), imported only by unique tasks: redis is optional."""
    try:
        from . import _unique_lock
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigurationError(
            f"unique tasks keep their locks in Redis and need redis-py ({exc}): "
            "pip install 'celery-kit[redis]'."
        ) from exc
    return _unique_lock


def guard_run(run: Callable[..., Any]) -> Callable[..., Any]:
    """``run`` wrapped to claim the lock before the body and keep or release it after."""
    wrapped: Callable[..., Any] = _lock_module().guarded_run(run)
    return wrapped


def bind_guard(task: Any, app: Any) -> Any:
    """The task's :class:`~celery_kit._unique_lock.UniqueGuard`, checked at registration."""
    unique = task.unique
    if not isinstance(unique, Unique):
        raise ConfigurationError(f"task {task.name!r}: unique= takes a Unique(...), got {unique!r}.")
    return _lock_module().UniqueGuard(task, unique, lock_store_url(unique, app.conf, task.name))
