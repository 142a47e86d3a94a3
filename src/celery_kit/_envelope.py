"""Is this message one Celery's worker can take? The checks behind the message guard.

Celery 5.7's consumer reads a task message's envelope in the worker's *main* process
without checking it: ``on_task_received`` looks the ``task`` header up in a dict, the
default strategy and ``Request.__init__`` unpack the body, parse ``eta`` and ``expires``
and keep ``timelimit``, and the prefork pool hands the time limits to kombu's timer
(``float(secs)``, ``hard - soft``). A value of the wrong type raises there, outside any
task: the worker exits ("Unrecoverable error"), and with late acks the unacknowledged
message is delivered again to the next worker -- one message, a crash loop across the
fleet. Other values do not crash but mislead: ``ignore_result="no"`` is true, a negative
soft limit fires at once, errbacks that are not signatures are published as tasks of
their own name, a header named like a kit-internal request attribute impersonates it.

:func:`envelope_problem` says, in words, what in a message would crash or mislead
Celery, and ``None`` for everything Celery's own producers send -- everything Celery
accepts, with the types it documents (``docs/internals/protocol``). What Celery already
refuses safely and reports (an undecodable body, a refused content type, a message with
no ``task`` header, an unknown task name) is left to Celery, so each refusal is reported
once. The body is decoded here only for a registered task, where Celery decodes it in
this process anyway (kombu caches the result).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from datetime import datetime
from typing import Any

from celery.utils.time import maybe_iso8601, maybe_make_aware
from celery.utils.time import timezone as celery_timezone
from kombu.asynchronous.timer import to_timestamp

__all__ = ["MAX_ID_LENGTH", "MAX_REPR_LENGTH", "envelope_problem"]

#: Longest task name, task id, root/parent id or group id accepted (a UUID is 36).
MAX_ID_LENGTH = 1024
#: Longest ``argsrepr``/``kwargsrepr`` accepted; Celery's producer truncates them to ~1 KiB.
MAX_REPR_LENGTH = 65536
#: Request attributes the kit sets on a request during an attempt; no header may pose as one.
_KIT_PREFIX = "_celery_kit"

Check = Callable[[Any], str | None]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _text(limit: int, *, optional: bool = True) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is str and len(value) <= limit:
            return None
        if value is None and optional:
            return None
        if not isinstance(value, str):
            return f"must be a string{' or null' if optional else ''}, not {_type_name(value)}"
        if len(value) > limit:
            return f"is {len(value)} characters long, above the {limit} accepted"
        return None

    return check


def _count(value: Any) -> str | None:
    """A non-negative integer or null (``retries`` is checked as not null on its own)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a non-negative integer, not {_type_name(value)}"
    if value < 0:
        return f"must be a non-negative integer, not {value}"
    return None


def _retries(value: Any) -> str | None:
    if value is None:
        return "must be a non-negative integer, not null (Celery adds 1 to it on retry)"
    return _count(value)


def _flag(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return f"must be true, false or null, not {_type_name(value)} (Celery reads any value as a flag)"


def _seconds(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"limits must be numbers of seconds or null, not {_type_name(value)}"
    try:
        seconds = float(value)  # what kombu's timer does with it
    except OverflowError:
        return "limits must be numbers of seconds a float can hold"
    if not math.isfinite(seconds) or seconds < 0:
        return f"limits must be finite and not negative, not {_short(value)}"
    return None


def _timelimit(value: Any) -> str | None:
    """``[hard, soft]``: the prefork pool feeds both to kombu's timer and subtracts them."""
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None  # Celery: no limits from the message, the task's own apply
    if value == [None, None]:
        return None  # what Celery's producer sends without limits: the common case
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        shape = f"{len(value)} items" if isinstance(value, (list, tuple)) else _type_name(value)
        return f"must be [hard, soft] (two numbers of seconds or nulls), not {shape}"
    for limit in value:
        problem = _seconds(limit)
        if problem is not None:
            return problem
    return None


def _moment(value: Any) -> datetime:
    """Parse ``value`` as Celery's ``Request`` does; raise what Celery's strategy would."""
    if not value:  # Celery skips the parse but not the timezone step: AttributeError
        raise ValueError("an empty value is not a date")
    if not isinstance(value, (str, datetime)):
        raise TypeError(f"must be an ISO 8601 date-time string, not {_type_name(value)}")
    moment: datetime = maybe_make_aware(maybe_iso8601(value))
    return moment


def _eta(value: Any) -> str | None:
    if value is None:
        return None
    try:
        # The strategy turns an aware ETA into a timer timestamp, in this process.
        to_timestamp(celery_timezone.to_system(_moment(value)))  # type: ignore[no-untyped-call]
    except (AttributeError, ValueError, TypeError, OverflowError) as exc:
        return f"is not a date-time Celery can schedule ({_short(value)}): {exc}"
    return None


def _expires(value: Any) -> str | None:
    if value is None:
        return None
    try:
        _moment(value).timestamp()
    except (AttributeError, ValueError, TypeError, OverflowError) as exc:
        return f"is not a date-time ({_short(value)}): {exc}"
    return None


def _signature_list(*, options_required: bool) -> Check:
    """Callbacks, errbacks, a chain: lists of signature mappings naming their task.

    Celery turns each into a signature after (or, for errbacks, instead of) the task; a
    string there is published as a task *named* by that string. A failing task's chain is
    failed element by element through each one's ``options`` (in the worker's main
    process, for a hard time limit), so a chain element must carry them.
    """

    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (list, tuple)):
            return f"must be a list of task signatures or null, not {_type_name(value)}"
        for item in value:
            problem = _signature(item)
            if problem is None and options_required and not isinstance(item.get("options"), dict):
                problem = "each chained signature must carry an 'options' object"
            if problem is not None:
                return problem
        return None

    return check


_SIGNATURE_PARTS: dict[str, type | tuple[type, ...]] = {
    "args": (list, tuple),
    "kwargs": dict,
    "options": dict,
}


def _signature(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"signatures must be objects, not {_type_name(value)}"
    if not isinstance(value.get("task"), str):
        return f"a signature's 'task' must be a string, not {_type_name(value.get('task'))}"
    for part, kind in _SIGNATURE_PARTS.items():
        item = value.get(part)
        if item is not None and not isinstance(item, kind):
            return f"a signature's {part!r} must be {'an array' if part == 'args' else 'an object'}"
    return None


_signatures = _signature_list(options_required=False)
_chain = _signature_list(options_required=True)


def _mapping(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    return f"must be an object or null, not {_type_name(value)}"


def _names(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return "must be a list of strings or null"
    return None


def _stamps(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"must be an object or null, not {_type_name(value)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}..."


#: Every header Celery's worker reads, and what it must hold. ``task`` and ``id`` are
#: checked first, on their own. Embed keys are here too: with a null embed, Celery's
#: trace takes ``callbacks``/``errbacks``/``chain``/``chord`` from the headers.
_HEADER_CHECKS: dict[str, Check] = {
    "shadow": _text(MAX_ID_LENGTH),
    "root_id": _text(MAX_ID_LENGTH),
    "parent_id": _text(MAX_ID_LENGTH),
    "group": _text(MAX_ID_LENGTH),
    "group_index": _count,
    "retries": _retries,
    "timelimit": _timelimit,
    "eta": _eta,
    "expires": _expires,
    "argsrepr": _text(MAX_REPR_LENGTH),
    "kwargsrepr": _text(MAX_REPR_LENGTH),
    "origin": _text(MAX_ID_LENGTH),
    "ignore_result": _flag,
    "replaced_task_nesting": _count,
    "stamped_headers": _names,
    "stamps": _stamps,
    "headers": _mapping,
    "callbacks": _signatures,
    "errbacks": _signatures,
    "chain": _chain,
    "chord": _signature,
}


def _priority(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        return f"must be an integer from 0 to 255 or null, not {_short(value)}"
    return None


#: Message properties the request copies: ``priority`` reaches child tasks, ``reply_to``
#: and ``correlation_id`` address the reply of the ``rpc://`` result backend. On RabbitMQ
#: the protocol types them; on Redis they are whatever JSON the publisher wrote.
_PROPERTY_CHECKS: dict[str, Check] = {
    "correlation_id": _text(MAX_ID_LENGTH),
    "reply_to": _text(MAX_ID_LENGTH),
    "priority": _priority,
}

_EMBED_CHECKS: dict[str, Check] = {
    "callbacks": _signatures,
    "errbacks": _signatures,
    "chain": _chain,
    "chord": _signature,
}


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        return (
            f"the body ({_type_name(body)}) is not the array [args, kwargs, embed] of "
            "Celery's message protocol 2"
        )
    args, kwargs, embed = body
    if not isinstance(args, (list, tuple)):
        return f"args (body[0]) must be an array, not {_type_name(args)}"
    if not isinstance(kwargs, dict):
        return f"kwargs (body[1]) must be an object, not {_type_name(kwargs)}"
    if embed is not None and not isinstance(embed, dict):
        return f"embed (body[2]) must be an object or null, not {_type_name(embed)}"
    if embed:
        for key, check in _EMBED_CHECKS.items():
            value = embed.get(key)
            problem = check(value) if value is not None else None
            if problem is not None:
                return f"embed (body[2]) {key!r} {problem}"
    return None


def _headers_problem(headers: dict[Any, Any]) -> str | None:
    """One pass over the headers (this runs for every message, in the consumer)."""
    checks = _HEADER_CHECKS
    for key, value in headers.items():
        if value is None:
            if key == "retries":
                return f"the 'retries' header {_retries(value)}"
            continue  # every header Celery reads may be null but ``retries``
        check = checks.get(key)
        if check is None:
            if isinstance(key, str) and key.startswith(_KIT_PREFIX):
                return f"the {_short(key)} header poses as an attribute celery_kit sets on requests"
            continue
        problem = check(value)
        if problem is not None:
            return f"the {key!r} header {problem}"
    return None


def _properties_problem(message: Any) -> str | None:
    properties = getattr(message, "properties", None)
    if not properties:
        return None
    if not isinstance(properties, dict):
        return f"the message properties must be a mapping, not {_type_name(properties)}"
    for key, check in _PROPERTY_CHECKS.items():
        value = properties.get(key)
        problem = check(value) if value is not None else None
        if problem is not None:
            return f"the {key!r} property {problem}"
    return None


def envelope_problem(message: Any, known_tasks: Container[str]) -> str | None:
    """What in ``message`` would crash or mislead Celery's worker; ``None`` if nothing.

    Protocol 2 (a ``task`` header): the task name and id must be strings, every header
    Celery reads must have the type it documents (see the module docstring), and, for a
    registered task, the body must be ``[args, kwargs, embed]``. Protocol 1 (the task
    named in a mapping body): a string task name and id. Anything Celery already refuses
    and reports itself yields ``None``, so it is reported once, by Celery's path.
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return None  # Celery: an unknown message, rejected and reported
    if "task" in headers:  # protocol 2
        name = headers["task"]
        if not isinstance(name, str):
            return f"the 'task' header must be a string, not {_type_name(name)}"
        if len(name) > MAX_ID_LENGTH:
            return f"the 'task' header is {len(name)} characters long, above {MAX_ID_LENGTH}"
        task_id = headers.get("id")
        body_problem = None
        if name in known_tasks:
            try:
                body = message.payload
            except Exception:
                return None  # Celery reports a body it cannot decode or must not accept
            if isinstance(body, dict) and "args" in body:  # a hybrid protocol-1 body
                # Celery builds the headers from the body, then lays the real ones over it.
                task_id = headers.get("id", body.get("id"))
                body_problem = _headers_problem(body)
            else:
                body_problem = _body_problem(body)
        problem = _id_problem(task_id) or _headers_problem(headers) or _properties_problem(message)
        return problem or body_problem
    # protocol 1: the body is a mapping naming the task
    try:
        body = message.payload
    except Exception:
        return None  # Celery reports it as a decode error
    if not isinstance(body, dict) or "task" not in body:
        return None  # Celery: an unknown message
    if not isinstance(body["task"], str):
        return f"the body's 'task' must be a string, not {_type_name(body['task'])}"
    # Celery reads the body's fields as the headers of protocol 2.
    return _id_problem(body.get("id")) or _headers_problem(body) or _properties_problem(message)


def _id_problem(task_id: Any) -> str | None:
    if not isinstance(task_id, str):
        return f"the task id ('id' header) must be a string, not {_type_name(task_id)}"
    if len(task_id) > MAX_ID_LENGTH:
        return f"the task id ('id' header) is {len(task_id)} characters long, above {MAX_ID_LENGTH}"
    return None
