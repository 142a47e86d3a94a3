"""Replay: check an entry against the task as it is now, then publish it again, confirmed.

An entry is replayed only when the worker would run it: the task is registered, the
content type accepted, the envelope sound (the message guard's own check) and the
payload valid for the task's *current* signature -- the kit's own validation, the same
one the caller runs. An entry that does not fit stays in the store, with the reason.

The replayed message is the stored one -- same body, same task id, same headers and
properties -- with three changes, each so that it can run after a fix:

* ``celery_kit_replayed_from`` names the entry it came from;
* ``retries`` starts again at 0 and the kit's first-attempt header is dropped: a fixed
  task gets its whole retry budget and deadline, instead of failing for good on its
  first transient error;
* ``expires`` is dropped: a message whose expiry passed while it sat in the store would
  be revoked on arrival, which is not what an operator who replays it asks for.
"""

from __future__ import annotations

import inspect
import json
import time
from typing import Any

from kombu.connection import Connection
from kombu.message import Message
from kombu.messaging import Producer
from kombu.serialization import prepare_accept_content
from pydantic import ValidationError

from .._bridge import PUBLISHED_AT_HEADER
from .._envelope import envelope_problem
from .._payload import payload_validation_error
from ._entry import REPLAYED_FROM_HEADER, DeadLetter

__all__ = ["publish", "replay_connection", "replay_problem"]

#: Kept from the kit's ``_task.py``: the first-attempt time a retry message carries.
FIRST_ATTEMPT_HEADER = "celery_kit_first_attempt"
_PROPERTIES = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration", "message_id", "type")


def _as_message(entry: DeadLetter, accept: Any) -> Message:
    stored = entry.message
    return Message(  # type: ignore[no-untyped-call]
        body=stored.raw_body(),
        content_type=stored.content_type,
        content_encoding=stored.content_encoding,
        headers=dict(stored.headers),
        properties=dict(stored.properties),
        accept=accept,
    )


def replay_problem(app: Any, entry: DeadLetter) -> str | None:
    """Why ``entry`` must not be replayed now; ``None`` when the worker would run it."""
    tasks = app.tasks
    if entry.task_name not in tasks:
        return (
            f"no task named {entry.task_name!r} is registered here; deploy it (and import its "
            "module in the app) before replaying"
        )
    accept = prepare_accept_content(app.conf.accept_content)  # type: ignore[no-untyped-call]
    message = _as_message(entry, accept)
    try:
        body = message.decode()  # type: ignore[no-untyped-call]
    except Exception as exc:
        return f"the body cannot be read as a task message ({type(exc).__name__}: {exc})"
    try:
        problem = envelope_problem(message, tasks)
    except Exception as exc:
        problem = f"the envelope could not be checked ({type(exc).__name__}: {exc})"
    if problem is not None:
        return problem
    if not (isinstance(body, (list, tuple)) and len(body) == 3):
        return "the body is not a protocol-2 task message ([args, kwargs, embed])"
    args, kwargs, _ = body
    task = tasks[entry.task_name]
    schema = getattr(task, "payload_schema", None)
    kit_rules = getattr(task, "_kit_rules", None)
    if schema is not None and kit_rules is not None and kit_rules():
        try:
            schema.validate(args, kwargs)
        except ValidationError as exc:
            return str(payload_validation_error(exc, entry.task_name))
        return None
    try:  # a plain Celery task: its arguments must bind, as Celery checks them
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:
        return f"the arguments do not fit {entry.task_name}: {exc}"
    return None


def replay_connection(app: Any) -> Connection:
    """A connection to the app's broker that waits for RabbitMQ's publisher confirms."""
    url = app.conf.broker_write_url or app.conf.broker_url or ""
    first = url[0] if isinstance(url, (list, tuple)) else str(url)
    options: dict[str, Any] = {}
    if first.split("://")[0] in ("amqp", "amqps", "pyamqp"):
        options["confirm_publish"] = True
    conn: Connection = app.connection_for_write(transport_options=options)
    return conn


def publish(app: Any, connection: Connection, entry: DeadLetter) -> None:
    """Publish ``entry``'s message again; returns once the broker has it (confirmed on
    RabbitMQ, the list push acknowledged on Redis). Raises on any failure."""
    stored = entry.message
    headers = dict(stored.headers)
    headers[REPLAYED_FROM_HEADER] = entry.id
    headers[PUBLISHED_AT_HEADER] = time.time()
    headers["retries"] = 0
    headers.pop(FIRST_ATTEMPT_HEADER, None)
    headers.pop("expires", None)
    properties = {
        key: stored.properties[key] for key in _PROPERTIES if stored.properties.get(key) is not None
    }
    properties.setdefault("delivery_mode", 2)
    routing_key = stored.routing_key or entry.queue or app.conf.task_default_queue
    declare = []
    queue = app.amqp.queues.get(routing_key)
    if queue is not None and not stored.exchange:
        declare.append(queue)
    producer = Producer(connection.default_channel)  # type: ignore[no-untyped-call]
    producer.publish(  # type: ignore[no-untyped-call]
        stored.raw_body(),
        exchange=stored.exchange or "",
        routing_key=routing_key,
        headers=json.loads(json.dumps(headers, default=str)),
        content_type=stored.content_type or "application/json",
        content_encoding=stored.content_encoding or "utf-8",
        declare=declare,
        retry=False,
        **properties,
    )
