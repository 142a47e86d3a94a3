"""The RabbitMQ store: an append-only stream of records, folded into the entries.

A stream queue (``x-queue-type: stream``) is durable, replicated where the cluster is,
and can be read from its first record without consuming it -- any number of readers
(a worker's refresher, two operators' CLIs) see the same records in the same order.
Every change is a record appended with publisher confirms:

* ``put`` (an entry, whole), ``keep`` (the entry with a new reason, from a replay that
  found it no longer validates), ``remove`` (replayed: published and confirmed),
  ``purge``, ``drop`` (retention);
* ``claim``: a replay's claim on one entry, with a token and an expiry. The stream's
  order decides: the first claim appended while the entry is unclaimed wins, so two
  operators replaying at once never both publish it; ``release``, ``keep`` and
  ``remove`` act only for the token that holds the claim.

The state is the fold of the records, read up to a ``sync`` record the reader appended
itself (so it has seen everything written before it asked). Reads cost one pass over
the stream: fine for the thousands of entries a dead-letter store holds; the stream's
own ``x-max-age`` (the retention age plus a day) removes old records for good.

Retention (count and age) is applied by the worker's main process every refresh
(``celery_kit_dead_letter_refresh``, 15 s), not at each write -- a write is one confirmed
publish and must stay cheap -- so the store may exceed ``max_entries`` by what arrives
between two refreshes. Drops are records too: counted once, by the process whose
``drop`` record took effect.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import amqp  # type: ignore[import-untyped]
from kombu.connection import Connection

from .._redact import redact_url
from ._backend import Claim, Counts, PutResult
from ._entry import DeadLetter

__all__ = ["StreamBackend"]

F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """One operation at a time per backend: a py-amqp channel is not thread-safe (the
    worker's consumer and its refresher thread share the main process's store)."""

    @functools.wraps(method)
    def locked(self: StreamBackend, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


#: Seconds a read waits for the stream to deliver up to its own sync record.
READ_TIMEOUT = 30.0
_PREFETCH = 1000


@dataclass
class _State:
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    claims: dict[str, tuple[str, float]] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    #: Tokens of the claim and drop records that took effect.
    effective: set[str] = field(default_factory=set)


def _task(entry: dict[str, Any]) -> str:
    return str(entry.get("task_name") or "unknown")


def fold(records: list[dict[str, Any]]) -> _State:
    state = _State()
    for record in records:
        op, entry_id = record.get("op"), record.get("id")
        if not isinstance(entry_id, str):
            continue
        if op == "put":
            state.entries.pop(entry_id, None)  # moves to the end: newest
            state.entries[entry_id] = record["entry"]
            state.claims.pop(entry_id, None)
        elif op == "claim":
            held = state.claims.get(entry_id)
            if entry_id in state.entries and (held is None or held[1] <= float(record["at"])):
                state.claims[entry_id] = (record["token"], float(record["expires"]))
                state.effective.add(record["token"])
        elif op in ("release", "keep", "remove"):
            held = state.claims.get(entry_id)
            if held is None or held[0] != record.get("token"):
                continue
            del state.claims[entry_id]
            if op == "keep" and entry_id in state.entries:
                state.entries[entry_id] = record["entry"]
            elif op == "remove":
                state.entries.pop(entry_id, None)
        elif op in ("purge", "drop"):
            entry = state.entries.pop(entry_id, None)
            state.claims.pop(entry_id, None)
            if entry is not None and op == "drop":
                state.dropped[_task(entry)] += 1
                state.effective.add(record["token"])
    return state


class StreamBackend:
    name = "rabbitmq"

    def __init__(self, url: str, stream: str, *, max_age: float) -> None:
        self.url = url
        self.stream = stream
        self.max_age = max_age
        self.location = f"{redact_url(url)} stream {stream}"
        self._connection: Any = None
        self._channel: Any = None
        self._pid = 0
        self._lock = threading.RLock()

    # -- the connection --------------------------------------------------------------------

    def _open(self) -> Any:
        if self._channel is not None and self._pid == os.getpid():
            return self._channel
        connection: Any = Connection(self.url, transport_options={"confirm_publish": True})  # type: ignore[no-untyped-call]
        connection.connect()
        self._connection = connection
        channel = connection.channel()
        channel.queue_declare(
            queue=self.stream,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "stream", "x-max-age": f"{int(self.max_age) + 86400}s"},
        )
        self._channel, self._pid = channel, os.getpid()
        return channel

    def _append(self, *records: dict[str, Any]) -> None:
        channel = self._open()
        try:
            for record in records:
                body = json.dumps(record, separators=(",", ":"))
                message = amqp.Message(body, content_type="application/json", delivery_mode=2)
                channel.basic_publish(message, exchange="", routing_key=self.stream)  # confirmed
        except Exception:
            self.close()
            raise

    def _exists(self) -> bool:
        """Whether the stream exists, without creating it: a worker that never kept a dead
        letter (or an operator's ``kit dlq list``) leaves no empty stream behind."""
        if self._channel is not None and self._pid == os.getpid():
            return True  # opened (and declared) by this process already
        connection: Any = Connection(self.url)  # type: ignore[no-untyped-call]
        try:
            connection.connect()
            connection.channel().queue_declare(queue=self.stream, passive=True)
        except amqp.exceptions.NotFound:
            return False
        finally:
            with contextlib.suppress(Exception):
                connection.release()
        return True

    def _read(self) -> list[dict[str, Any]]:
        if not self._exists():
            return []
        marker = uuid.uuid4().hex
        self._append({"op": "sync", "id": "", "token": marker})
        records: list[dict[str, Any]] = []
        done = False
        channel = self._open()

        def on_message(message: Any) -> None:
            nonlocal done
            try:
                record = json.loads(message.body)
            except ValueError:
                record = {}
            if isinstance(record, dict):
                if record.get("op") == "sync":
                    done = done or record.get("token") == marker
                else:
                    records.append(record)
            channel.basic_ack(message.delivery_tag)

        try:
            channel.basic_qos(0, _PREFETCH, False)
            tag = channel.basic_consume(
                self.stream, callback=on_message, no_ack=False, arguments={"x-stream-offset": "first"}
            )
            deadline = time.monotonic() + READ_TIMEOUT
            assert self._connection is not None
            while not done:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"the dead-letter stream {self.stream} did not deliver its records")
                self._connection.drain_events(timeout=remaining)
            channel.basic_cancel(tag)
        except Exception:
            self.close()
            raise
        return records

    def _state(self) -> _State:
        return fold(self._read())

    # -- the operations ----------------------------------------------------------------------

    @_locked
    def put(self, entry: DeadLetter, now: float, max_entries: int, max_age: float) -> PutResult:
        self._append({"op": "put", "id": entry.id, "at": now, "entry": entry.model_dump(mode="json")})
        return PutResult(new=True)

    @_locked
    def trim(self, now: float, max_entries: int, max_age: float) -> list[str]:
        state = self._state()
        victims = [
            (entry_id, entry)
            for entry_id, entry in state.entries.items()
            if DeadLetter.model_validate(entry).stored_at.timestamp() < now - max_age
        ]
        left = [i for i in state.entries if i not in dict(victims)]
        victims += [(i, state.entries[i]) for i in left[: max(0, len(left) - max_entries)]]
        if not victims:
            return []
        mine = {uuid.uuid4().hex: (entry_id, _task(entry)) for entry_id, entry in victims}
        self._append(*({"op": "drop", "id": i, "token": t, "at": now} for t, (i, _) in mine.items()))
        effective = self._state().effective
        return [task for token, (_, task) in mine.items() if token in effective]

    @_locked
    def entries(self) -> list[DeadLetter]:
        return [DeadLetter.model_validate(e) for e in self._state().entries.values()]

    @_locked
    def get(self, entry_id: str) -> DeadLetter | None:
        entry = self._state().entries.get(entry_id)
        return None if entry is None else DeadLetter.model_validate(entry)

    @_locked
    def claim(self, entry_id: str, token: str, now: float, timeout: float) -> Claim | None:
        self._append({"op": "claim", "id": entry_id, "token": token, "at": now, "expires": now + timeout})
        state = self._state()
        entry = state.entries.get(entry_id)
        if entry is None:
            return None
        holder = state.claims.get(entry_id)
        if holder is not None and holder[0] == token:
            return Claim(DeadLetter.model_validate(entry))
        return Claim(None, holder=holder[0] if holder else None)

    @_locked
    def release(self, entry_id: str, token: str) -> bool:
        self._append({"op": "release", "id": entry_id, "token": token})
        return True

    @_locked
    def keep(self, entry: DeadLetter, token: str) -> bool:
        self._append({"op": "keep", "id": entry.id, "token": token, "entry": entry.model_dump(mode="json")})
        return True

    @_locked
    def remove(self, entry_id: str, token: str) -> bool:
        self._append({"op": "remove", "id": entry_id, "token": token})
        return True

    @_locked
    def purge(self, ids: list[str] | None, before: float | None) -> int:
        state = self._state()
        if ids is not None:
            targets = [i for i in ids if i in state.entries]
        elif before is not None:
            targets = [
                i
                for i, e in state.entries.items()
                if DeadLetter.model_validate(e).stored_at.timestamp() < before
            ]
        else:
            targets = list(state.entries)
        if targets:
            self._append(*({"op": "purge", "id": i} for i in targets))
        return len(targets)

    @_locked
    def counts(self) -> Counts:
        state = self._state()
        by_task: Counter[str] = Counter(_task(e) for e in state.entries.values())
        return Counts(dict(by_task), dict(state.dropped))

    @_locked
    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):  # closing a broken connection: nothing to do
                self._connection.release()
        self._connection = None
        self._channel = None

    @_locked
    def delete(self) -> None:
        """Delete the stream (tests)."""
        channel = self._open()
        channel.queue_delete(self.stream)
        self.close()
