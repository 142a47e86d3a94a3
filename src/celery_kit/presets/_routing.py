"""Queues, routes by task-name prefix, and default rate limits.

The service template routes with ``task_routes = {'app.tasks.email.*': {'queue': 'email'}}``
and declares nothing else, so the queues exist only once something is published to them
and a worker started without ``-Q`` never consumes them. Here every routed queue is also
declared in ``task_queues`` -- with the default queue, so unrouted tasks still have a
consumer -- as kombu :class:`~kombu.Queue` objects, which ``config_from_object`` and
``conf.update`` take as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kombu.entity import Exchange, Queue

from .._errors import ConfigurationError

__all__ = ["QueuesSpec", "RateLimits", "annotations_for", "routing_for"]

#: ``["email", "reports"]``, or ``{"email": "app.tasks.email.*", "reports": [...]}``.
QueuesSpec = Sequence[str] | Mapping[str, str | Sequence[str]]
#: ``"100/m"`` for every task, or ``{"*": "100/m", "app.tasks.email.send": "10/s"}``.
RateLimits = str | Mapping[str, str]

_RATE = re.compile(r"^\d+(\.\d+)?(/[smh])?$")
_GLOB = re.compile(r"[*?\[\]]")
QUORUM_ARGUMENTS = {"x-queue-type": "quorum"}


def _patterns(queues: QueuesSpec, route_prefix: str) -> dict[str, list[str]]:
    if isinstance(queues, str) or not isinstance(queues, (Sequence, Mapping)):
        raise ConfigurationError(
            f"queues= takes a list of queue names or a mapping of queue name to task-name "
            f"patterns, got {queues!r}; write queues=[{queues!r}] for a single queue."
        )
    if isinstance(queues, Mapping):
        spec = {
            name: [patterns] if isinstance(patterns, str) else list(patterns)
            for name, patterns in queues.items()
        }
    else:
        if len(set(queues)) != len(queues):
            raise ConfigurationError(f"queues= lists a queue twice: {list(queues)!r}; list each once.")
        spec = {name: [f"{route_prefix}{name}.*"] for name in queues}
    seen: dict[str, str] = {}
    for name, patterns in spec.items():
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ConfigurationError(f"queue names must be non-empty strings without spaces, got {name!r}.")
        if not patterns:
            raise ConfigurationError(
                f"queue {name!r} has no task-name pattern; give at least one, "
                "e.g. {'email': 'app.tasks.email.*'}."
            )
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern:
                raise ConfigurationError(f"queue {name!r}: task-name patterns are non-empty strings.")
            if pattern in seen and seen[pattern] != name:
                raise ConfigurationError(
                    f"task-name pattern {pattern!r} routes to both {seen[pattern]!r} and {name!r}; "
                    "route each pattern to one queue."
                )
            seen[pattern] = name
    return spec


def _queue(name: str, *, quorum: bool) -> Queue:
    # Native delayed delivery, which quorum queues need for ETA/countdown tasks, cannot
    # use direct exchanges: quorum queues get a topic exchange.
    exchange = Exchange(name, type="topic" if quorum else "direct", durable=True)  # type: ignore[no-untyped-call]
    return Queue(  # type: ignore[no-untyped-call]
        name,
        exchange,
        routing_key=name,
        durable=True,
        queue_arguments=dict(QUORUM_ARGUMENTS) if quorum else None,
    )


def routing_for(
    queues: QueuesSpec | None, *, route_prefix: str, default_queue: str, quorum: bool
) -> dict[str, Any]:
    """``task_default_queue`` and, with ``queues``, ``task_queues`` and ``task_routes``."""
    if not isinstance(default_queue, str) or not default_queue.strip():
        raise ConfigurationError(f"default_queue must be a non-empty queue name, got {default_queue!r}.")
    settings: dict[str, Any] = {"task_default_queue": default_queue}
    if queues is None:
        return settings
    spec = _patterns(queues, route_prefix)
    names = [default_queue, *(name for name in spec if name != default_queue)]
    settings["task_queues"] = [_queue(name, quorum=quorum) for name in names]
    settings["task_routes"] = {
        pattern: {"queue": name} for name, patterns in spec.items() for pattern in patterns
    }
    return settings


def annotations_for(rate_limits: RateLimits | None) -> dict[str, Any]:
    """``task_annotations`` setting default rate limits, validated now rather than at first use."""
    if rate_limits is None:
        return {}
    limits = {"*": rate_limits} if isinstance(rate_limits, str) else dict(rate_limits)
    annotations: dict[str, dict[str, str]] = {}
    for task_name, limit in limits.items():
        if task_name != "*" and (not task_name or _GLOB.search(task_name)):
            raise ConfigurationError(
                f"rate_limits key {task_name!r}: Celery's task_annotations match an exact task "
                "name or '*' (every task), not a pattern; list the task names one by one."
            )
        if not isinstance(limit, str) or not _RATE.match(limit):
            raise ConfigurationError(
                f"rate limit {limit!r} for {task_name!r} is not a Celery rate; write "
                "'<number>/s', '<number>/m' or '<number>/h', e.g. '100/m'."
            )
        annotations[task_name] = {"rate_limit": limit}
    return {"task_annotations": annotations}
