"""The Redis half of uniqueness: lock store, scripts, renewal, the caller and worker hooks.

See :mod:`celery_kit._unique` for the life of a lock and why each step is where it is.
Imported only when a unique task is created, since redis-py is an optional dependency.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from importlib import resources
from typing import Any

import redis
from celery.exceptions import Ignore, Reject, Retry
from pydantic import ValidationError

from ._bridge import connect_unique
from ._dispatch import dispatcher_of
from ._errors import ConfigurationError, DuplicateTaskError
from ._events import Classification, EventType, FailureKind, TaskEvent
from ._unique import UNIQUE_HEADER, Unique

__all__ = ["UniqueGuard", "guarded_run"]

logger = logging.getLogger("celery_kit.unique")

_KEY_PREFIX = "celery_kit:unique:"
#: Canonical keys longer than this are stored as their SHA-256 (Redis keys stay small).
_MAX_READABLE_KEY = 200


# -- the lock store ---------------------------------------------------------------------------


def _script_source(name: str) -> str:
    return resources.files("celery_kit").joinpath("_unique_lua", f"{name}.lua").read_text("utf-8")


class _Store:
    """One Redis client and its four registered scripts, per lock-store URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        # redis-py's pool reconnects after a fork, so one client serves every process.
        self.client = redis.Redis.from_url(url)
        self.sources = {name: _script_source(name) for name in ("acquire", "claim", "extend", "release")}
        self.acquire = self.client.register_script(self.sources["acquire"])
        self.claim = self.client.register_script(self.sources["claim"])
        self.extend = self.client.register_script(self.sources["extend"])
        self.release = self.client.register_script(self.sources["release"])

    # -- the start lease, sent at start and answered at finish (no wait at start) -----------

    def send_lease(self, key: str, value: str, lease_ms: int) -> Any:
        """Send ``extend(key, value, lease)`` on a connection of its own; do not read the reply.

        Returns the connection, which holds the unread reply until :meth:`finish_after`.
        Once this returns, the command is in the kernel's socket buffer: Redis applies it
        even if this process is killed the next instant. ``EVAL`` with the source, not
        ``EVALSHA``: a reply read later cannot be answered by loading the script first.
        """
        pool = self.client.connection_pool
        conn: Any
        try:
            conn = pool.get_connection()
        except TypeError:  # pragma: no cover - redis-py < 5.3 wants a command name
            conn = pool.get_connection("EVAL")
        try:
            conn.send_command("EVAL", self.sources["extend"], 1, key, value, lease_ms)
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return conn

    def finish_after(self, conn: Any, script: str, key: str, args: tuple[Any, ...]) -> tuple[Any, Any]:
        """Send the finish on the lease's connection and read both replies: one round trip.

        Returns ``(lease reply, finish reply)``; a script error comes back as the
        ``ResponseError`` in its place. Raises redis-py's ``ConnectionError`` or
        ``TimeoutError`` if the connection broke meanwhile (the lease's reply is lost).
        """
        pool = self.client.connection_pool
        try:
            # No health check: a PING now would read the pending lease reply as its own.
            conn.send_command("EVAL", self.sources[script], 1, key, *args, check_health=False)
            replies: list[Any] = []
            for _ in range(2):
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return replies[0], replies[1]


_stores: dict[str, _Store] = {}
_stores_lock = threading.Lock()


def _store(url: str) -> _Store:
    store = _stores.get(url)
    if store is None:
        with _stores_lock:
            store = _stores.setdefault(url, _Store(url))
    return store


# -- renewal while running ------------------------------------------------------------------


class _Renewer:
    """A daemon thread extending the leases held by this process, each a third before it ends.

    Only leases that are due are renewed (one pipeline per lock store), so a task shorter
    than a third of its lease costs no renewal at all.
    """

    def __init__(self) -> None:
        #: (key, owner value) -> (store, lease in ms, when the renewal is due)
        self._held: dict[tuple[str, str], tuple[_Store, int, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    def hold(self, store: _Store, key: str, value: str, lease_ms: int) -> None:
        with self._lock:
            self._held[(key, value)] = (store, lease_ms, time.monotonic() + lease_ms / 3000)
            if self._pid != os.getpid():  # first use in this process (threads do not survive fork)
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="celery_kit-unique-renewer", daemon=True).start()
        self._wake.set()

    def drop(self, key: str, value: str) -> None:
        with self._lock:
            self._held.pop((key, value), None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                due_at = min((due for _, _, due in self._held.values()), default=None)
            if due_at is None or due_at > time.monotonic():
                self._wake.wait(None if due_at is None else due_at - time.monotonic())
                self._wake.clear()
                continue
            now = time.monotonic()
            with self._lock:
                due = {item: entry for item, entry in self._held.items() if entry[2] <= now}
                for (key, value), (store, lease_ms, _) in due.items():
                    self._held[(key, value)] = (store, lease_ms, now + lease_ms / 3000)
            self._renew(due)

    def _renew(self, held: dict[tuple[str, str], tuple[_Store, int, float]]) -> None:
        by_store: dict[_Store, list[tuple[str, str, int]]] = {}
        for (key, value), (store, lease_ms, _) in held.items():
            by_store.setdefault(store, []).append((key, value, lease_ms))
        for store, items in by_store.items():
            try:
                pipe = store.client.pipeline(transaction=False)
                for key, value, lease_ms in items:
                    store.extend(keys=[key], args=[value, lease_ms], client=pipe)
                kept = pipe.execute()
            except redis.RedisError as exc:
                logger.warning("cannot renew unique-task locks at %s: %s", store.url, exc)
                continue
            for (key, value, _), ok in zip(items, kept, strict=True):
                if not ok:
                    logger.warning("unique-task lock %s was lost while its task ran", key)
                    self.drop(key, value)


_renewer = _Renewer()


# -- keys ---------------------------------------------------------------------------------------


def _lookup(payload: Any, path: str) -> Any:
    value = payload
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, (list, tuple)) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = getattr(value, part, None)
        if value is None:
            return None
    return value


@dataclass(frozen=True)
class _Held:
    key: str
    value: str
    #: The connection whose reply to the start lease is still unread (the fast path), or None.
    conn: Any = None


#: Brokers that mark a message redelivered after a worker loss (kombu's Redis transport
#: sets ``redelivered`` when it restores a message; AMQP brokers always do).
_FLAGS_REDELIVERY = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "librabbitmq")


class UniqueGuard:
    """A unique task's locks: built once when the task joins an app (``on_bound``)."""

    def __init__(self, task: Any, unique: Unique, url: str) -> None:
        self.unique = unique
        self.task_name: str = task.name
        self.url = url
        self.schema = task.payload_schema
        self.ttl_ms = int(unique.ttl * 1000)
        self.lease_ms = int(unique.lease * 1000)
        #: Whether a message of this task can come back unflagged after a worker loss
        #: (acks_late on a broker that does not mark redeliveries): then every start checks.
        broker = task.app.conf.broker_url or ""
        broker = broker[0] if isinstance(broker, (list, tuple)) and broker else str(broker)
        scheme = broker.split(";")[0].split("://")[0].split("+")[0]
        acks_late = task.acks_late if task.acks_late is not None else task.app.conf.task_acks_late
        self._unflagged_redelivery = bool(acks_late) and scheme not in _FLAGS_REDELIVERY
        # The wire form reveals secret fields: keep them out of Redis key names and errors.
        self._hash_keys = bool(getattr(self.schema, "has_secrets", False))
        self._check_fields()
        connect_unique(_release_revoked, _release_rejected)

    def _check_fields(self) -> None:
        schema, on = self.schema, self.unique.on
        if callable(on) or schema is None:
            return
        model = getattr(schema, "model", None)
        names = set(model.model_fields) if model is not None else set(schema.signature.parameters)
        missing = [path for path in on if path.split(".")[0] not in names]
        if missing:
            raise ConfigurationError(
                f"task {self.task_name!r}: Unique(on=...) names {missing}, which its payload does "
                f"not have; its fields are {sorted(names)}."
            )

    @property
    def store(self) -> _Store:
        return _store(self.url)

    # -- the key ------------------------------------------------------------------------------

    def key_of(self, args: Any, kwargs: Any) -> str:
        """The lock key of a call's wire-form arguments: canonical JSON, namespaced by task."""
        schema = self.schema
        on = self.unique.on
        if callable(on):
            payload = schema.validate_call(args or (), kwargs or {})[2] if schema is not None else kwargs
            if payload is None and schema is not None:
                payload = schema.named(args or (), kwargs or {})
            part = on(payload)
            if not isinstance(part, str):
                raise TypeError(
                    f"task {self.task_name!r}: Unique(on=callable) must return a str, got "
                    f"{type(part).__name__}."
                )
        else:
            payload = self._wire_payload(args or (), kwargs or {})
            part = json.dumps(
                [_lookup(payload, path) for path in on], sort_keys=True, separators=(",", ":"), default=str
            )
        if self._hash_keys or len(part) > _MAX_READABLE_KEY:
            part = "sha256:" + sha256(part.encode()).hexdigest()
        return f"{_KEY_PREFIX}{self.task_name}:{part}"

    def _wire_payload(self, args: Any, kwargs: Mapping[str, Any]) -> Any:
        schema = self.schema
        if schema is None:
            return dict(kwargs)
        if getattr(schema, "model", None) is not None:
            if len(args) == 1 and not kwargs:
                return args[0]
            return kwargs.get(schema.param_name, kwargs)
        return schema.named(args, kwargs)

    # -- caller side --------------------------------------------------------------------------

    def publish(
        self,
        task: Any,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        options: dict[str, Any],
        send: Callable[[str, dict[str, Any]], Any],
    ) -> Any:
        """Take the lock (``queued``), publish with the header, release if the publish fails."""
        headers = options.get("headers") or {}
        if UNIQUE_HEADER in headers or "retries" in options:
            # A retry (Celery's ``signature_from_request``), or a republish, of a message
            # that holds its lock: same task id and token (none if it came without the header).
            # No lock was taken for this send: without ``until`` the worker checks the lock.
            carried = headers.get(UNIQUE_HEADER)
            if isinstance(carried, Mapping) and "until" in carried:
                kept = {name: part for name, part in carried.items() if name != "until"}
                options = {**options, "headers": {**headers, UNIQUE_HEADER: kept}}
            return send(task_id or str(uuid.uuid4()), options)
        key = self.key_of(args, kwargs)
        task_id = task_id or str(uuid.uuid4())
        token = uuid.uuid4().hex
        header: dict[str, Any] = {"key": key, "token": token}
        if self.unique.mode == "running":
            return send(task_id, {**options, "headers": {**headers, UNIQUE_HEADER: header}})
        # Read before the lock is taken, so the lock outlives the deadline the worker reads.
        header["until"] = math.floor((time.time() + self.unique.ttl) * 1000) / 1000
        options = {**options, "headers": {**headers, UNIQUE_HEADER: header}}
        value = f"{task_id}|{token}"
        store = self.store
        holder = store.acquire(keys=[key], args=[value, self.ttl_ms])
        if holder is not None:
            existing = _task_id_of(holder)
            error = DuplicateTaskError(self.task_name, key, existing)
            self._refused(task, error, "caller", options.get("queue"))
            if self.unique.on_duplicate == "skip":
                return task.AsyncResult(existing)
            raise error
        try:
            return send(task_id, options)
        except BaseException:
            try:
                store.release(keys=[key], args=[value])
            except redis.RedisError as exc:
                logger.warning(
                    "publish failed and lock %s could not be released (%s): it expires in %ss",
                    key,
                    exc,
                    self.unique.ttl,
                )
            raise

    # -- worker side --------------------------------------------------------------------------

    def claim(self, task: Any, request: Any, args: Any, kwargs: Any) -> _Held:
        """Hold the lock for this attempt, or refuse to run a duplicate.

        The fast path (``queued``, first attempt, not redelivered, well before the lock's
        ``until``): the message still holds the lock its publish took, so nothing needs
        checking; the lease that bounds a kill is sent now and its reply read at finish.
        Every other start (``running``, a retry, a redelivery, a raw message, a message
        that waited nearly ``ttl``) checks the lock in Redis before the body runs.
        """
        header = getattr(request, UNIQUE_HEADER, None) or (request.headers or {}).get(UNIQUE_HEADER)
        until: Any = None
        if isinstance(header, Mapping) and isinstance(header.get("key"), str):
            key, token, until = header["key"], str(header.get("token") or ""), header.get("until")
        else:  # published around the kit: the worker builds the key itself
            wire_args, wire_kwargs = self.schema.to_wire(args, kwargs) if self.schema else (args, kwargs)
            key, token = self.key_of(wire_args, wire_kwargs), ""
        value = f"{request.id}|{token}"
        store = self.store
        if self._owns_unchecked(request, until):
            conn = store.send_lease(key, value, self.lease_ms)
            _renewer.hold(store, key, value, self.lease_ms)
            return _Held(key, value, conn)
        holder = store.claim(keys=[key], args=[value, self.lease_ms])
        if holder is not None:
            error = DuplicateTaskError(self.task_name, key, _task_id_of(holder))
            self._refused(task, error, "worker", (request.delivery_info or {}).get("routing_key"))
            if self.unique.on_duplicate == "skip":
                raise Ignore()
            request._celery_kit_outcome = Classification(FailureKind.PERMANENT, True, "duplicate")
            raise error
        _renewer.hold(store, key, value, self.lease_ms)
        return _Held(key, value)

    def _owns_unchecked(self, request: Any, until: Any) -> bool:
        """Whether this message is known to hold its lock without asking Redis.

        Only a ``queued`` message the kit published took its lock (before it was sent); it
        keeps it until ``until`` (its publish time plus ``ttl``) unless it started before
        -- a retry or a redelivery, whose lease may have lapsed since. The margin of one
        lease absorbs the time from here to Redis and clock differences between the caller
        and the worker.
        """
        if self.unique.mode != "queued" or isinstance(until, bool) or not isinstance(until, (int, float)):
            return False
        if request.retries or (request.delivery_info or {}).get("redelivered") or self._unflagged_redelivery:
            return False
        return time.time() < until - self.unique.lease

    def finish(self, held: _Held, keep: bool) -> None:
        """Keep the lock for a retry (back to ``ttl``), or release it: one round trip."""
        _renewer.drop(held.key, held.value)
        store = self.store
        if held.conn is not None and self._finish_after_lease(store, held, keep):
            return
        try:
            if keep:
                store.extend(keys=[held.key], args=[held.value, self.ttl_ms])
            else:
                store.release(keys=[held.key], args=[held.value])
        except redis.RedisError as exc:
            logger.warning(
                "unique-task lock %s not %s (%s): it expires within %ss",
                held.key,
                "kept" if keep else "released",
                exc,
                self.unique.lease,
            )

    def _finish_after_lease(self, store: _Store, held: _Held, keep: bool) -> bool:
        """The fast path's finish: on the lease's connection, so both replies come in one wait.

        Returns False if the connection broke meanwhile (a long task and a server
        ``timeout``): the caller then finishes with a plain script call.
        """
        script, args = ("extend", (held.value, self.ttl_ms)) if keep else ("release", (held.value,))
        try:
            leased, finished = store.finish_after(held.conn, script, held.key, args)
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        if isinstance(finished, redis.ResponseError):
            logger.warning(
                "unique-task lock %s not %s (%s): it expires within %ss",
                held.key,
                "kept" if keep else "released",
                finished,
                self.unique.lease,
            )
        if leased != 1:
            # The lock lapsed while the message waited (a queue near ttl, a failover).
            logger.warning(
                "unique-task lock %s was not this task's when it started (%s): another task "
                "for its key may have run meanwhile; raise ttl above the longest queue wait",
                held.key,
                leased,
            )
        return True

    def release_header(self, request: Any) -> None:
        """Release the lock a message carries (revoked or expired before it finished)."""
        header = getattr(request, UNIQUE_HEADER, None) or (getattr(request, "headers", None) or {}).get(
            UNIQUE_HEADER
        )
        if isinstance(header, Mapping) and isinstance(header.get("key"), str):
            value = f"{request.id}|{header.get('token') or ''}"
            try:
                self.store.release(keys=[header["key"]], args=[value])
            except redis.RedisError as exc:
                logger.warning("lock of revoked task %s not released: %s", request.id, exc)

    def _refused(self, task: Any, error: DuplicateTaskError, side: str, queue: str | None) -> None:
        dispatcher = dispatcher_of(task.app)
        if dispatcher is not None:
            dispatcher.emit(
                TaskEvent(
                    EventType.REFUSED,
                    self.task_name,
                    error.existing_task_id,
                    exception=error,
                    reason="duplicate",
                    detail=side,
                    queue=queue,
                    task=task,
                )
            )


def _task_id_of(holder: bytes | str) -> str:
    text = holder.decode() if isinstance(holder, bytes) else holder
    return text.rsplit("|", 1)[0]


def _release_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    guard = getattr(sender, "_unique_guard", None)
    if guard is not None and request is not None:
        guard.release_header(request)


def _release_rejected(sender: Any = None, message: Any = None, **_: Any) -> None:
    """A message the worker refused before any task ran (never requeued): free its lock."""
    headers = getattr(message, "headers", None)
    app = getattr(sender, "app", None)
    if not isinstance(headers, Mapping) or app is None or not isinstance(headers.get("task"), str):
        return
    guard = getattr(app.tasks.get(headers["task"]), "_unique_guard", None)
    if isinstance(guard, UniqueGuard) and isinstance(headers.get("id"), str):
        guard.release_header(_HeaderRequest(headers["id"], headers))


@dataclass(frozen=True)
class _HeaderRequest:
    """What :meth:`UniqueGuard.release_header` reads of a request, from a message's headers."""

    id: str
    headers: Mapping[str, Any]


def guarded_run(run: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a kit task's ``run``: claim before the body, keep or release after it."""

    def unique_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        guard: UniqueGuard | None = self._unique_guard
        request = self.request
        if guard is None or request.called_directly:
            return run(self, *args, **kwargs)
        try:
            held = guard.claim(self, request, args, kwargs)
        except ValidationError:  # a raw message with no key header and an invalid payload:
            return run(self, *args, **kwargs)  # the run refuses it as it refuses any
        except redis.RedisError as exc:
            payload = guard.schema.named(args, kwargs) if guard.schema is not None else kwargs
            self._handle_failure(exc, request, payload, time.time())  # the retry policy decides
        try:
            result = run(self, *args, **kwargs)
        except Retry:
            guard.finish(held, keep=True)
            raise
        except Reject as exc:
            guard.finish(held, keep=bool(exc.requeue))
            raise
        except BaseException:
            guard.finish(held, keep=False)
            raise
        guard.finish(held, keep=False)
        return result

    for name in ("__name__", "__qualname__", "__doc__", "__module__", "__signature__", "_celery_kit_run"):
        if hasattr(run, name):
            setattr(unique_run, name, getattr(run, name))
    return unique_run
