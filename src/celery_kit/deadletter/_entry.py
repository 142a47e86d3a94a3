"""The dead-letter entry: one message the kit gave up on, as it was published, and why.

An entry is a pydantic model, so it is validated when read back from the store and
dumps to plain JSON for the CLI's ``--json``. Its ``message`` keeps the body and headers
exactly as the worker received them (secrets included: a replay must be the same
message); :meth:`DeadLetter.masked` is the copy people read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["REPLAYED_FROM_HEADER", "DeadLetter", "DeadLetterStats", "StoredMessage", "entry_id"]

#: Header of a replayed message: the id of the entry it came from.
REPLAYED_FROM_HEADER = "celery_kit_replayed_from"

#: Where an entry came from.
Source = Literal["task", "worker_lost", "message_rejected"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$")


def entry_id(task_id: Any, body: bytes = b"", headers: Any = None) -> str:
    """The entry's id: deterministic per message, so a redelivered message that fails
    again (or is refused again) replaces its entry instead of adding a second one.

    The task id when it is a plain identifier; otherwise (a refused message with no
    usable id) a digest of the body and headers.
    """
    if isinstance(task_id, str) and _SAFE_ID.match(task_id):
        return task_id
    digest = hashlib.sha256(body)
    digest.update(json.dumps(headers, sort_keys=True, default=repr).encode())
    return f"m-{digest.hexdigest()[:32]}"


class StoredMessage(BaseModel):
    """A message as it was published: what a replay sends again."""

    model_config = ConfigDict(frozen=True)

    #: The body as text (``body_encoding="utf-8"``) or base64 (``"base64"``, a body that
    #: is not UTF-8: compressed, or binary garbage a guard refused).
    body: str
    body_encoding: Literal["utf-8", "base64"] = "utf-8"
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: dict[str, Any] = Field(default_factory=dict)
    #: AMQP properties that belong to the message (``correlation_id``, ``reply_to``,
    #: ``priority``, ...); delivery details (tags, redelivered) are not kept.
    properties: dict[str, Any] = Field(default_factory=dict)
    #: Where it was published to.
    exchange: str = ""
    routing_key: str | None = None

    @classmethod
    def from_bytes(cls, body: bytes | str, **fields: Any) -> StoredMessage:
        if isinstance(body, str):
            return cls(body=body, **fields)
        try:
            return cls(body=body.decode("utf-8"), **fields)
        except UnicodeDecodeError:
            return cls(body=base64.b64encode(body).decode("ascii"), body_encoding="base64", **fields)

    def raw_body(self) -> bytes:
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body.encode("utf-8")


class DeadLetter(BaseModel):
    """One dead letter. Times are UTC."""

    model_config = ConfigDict(frozen=True)

    id: str
    task_name: str
    task_id: str | None
    #: The queue (routing key) the message came from.
    queue: str | None
    #: ``task`` (a kit task's final failure), ``worker_lost`` (its pool process died and
    #: the message will not be redelivered), ``message_rejected`` (the worker's guard
    #: refused it before any task ran).
    source: Source
    #: The classification: a :class:`~celery_kit.FailureKind` value, or ``message_rejected``.
    kind: str
    #: ``retries exhausted``, ``permanent error``, ``hard time limit``, ``unknown_task`` ...
    reason: str
    exception_type: str | None = None
    #: Secrets masked, as everywhere the kit writes.
    exception_message: str | None = None
    #: Attempts the task had (0 for a message no task ever saw).
    attempts: int = 0
    first_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    hostname: str | None = None
    stored_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    #: The entry this message was itself replayed from, if it was a replay.
    replayed_from: str | None = None
    #: Why the last replay attempt left the entry where it is (it no longer validates ...).
    replay_error: str | None = None
    message: StoredMessage

    def masked(self, app: Any = None) -> DeadLetter:
        """A copy safe to show: secrets in the body, headers and error masked."""
        from ._masking import mask_entry

        return mask_entry(self, app)


class DeadLetterStats(BaseModel):
    """What a store holds: the counts ``kit dlq stats`` prints."""

    model_config = ConfigDict(frozen=True)

    backend: str
    location: str
    total: int
    by_task: dict[str, int]
    #: Entries dropped by retention (oldest first), by task, since the store was created.
    dropped: dict[str, int]
    oldest: datetime | None
    newest: datetime | None
    max_entries: int
    max_age: float


for _cls in (DeadLetter, DeadLetterStats, StoredMessage):
    _cls.__module__ = "celery_kit.deadletter"
