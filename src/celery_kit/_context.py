"""Producer to worker: an allowlisted, JSON-safe part of the producer's structlog context.

The producer's context (``structlog.contextvars``: a web request's ``request_id``, a
workflow's ``correlation_id``) travels in one message header and is bound on the worker,
so the request's id appears in the worker's lines and a chain keeps one
``correlation_id`` end to end. Only the keys an app allowlists travel
(``instrument(log_context=...)``), only JSON scalars, strings clipped: the header is
chosen by whoever publishes, so the worker sanitises it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import structlog

__all__ = ["CONTEXT_HEADER", "DEFAULT_PROPAGATED_KEYS", "ContextPropagation"]

#: Message header carrying the propagated structlog context.
CONTEXT_HEADER = "celery_kit_context"
DEFAULT_PROPAGATED_KEYS = ("request_id", "correlation_id")
_JSON_SCALARS = (str, int, float, bool, type(None))
_MAX_VALUE_LENGTH = 256


class ContextPropagation:
    """One app's allowlist: what it stamps on the messages it publishes and binds from them."""

    def __init__(self, keys: Iterable[str] = DEFAULT_PROPAGATED_KEYS) -> None:
        self.keys = frozenset(keys)

    def safe(self, raw: Any) -> dict[str, Any]:
        """The allowlisted, JSON-safe part of ``raw``: anything else is dropped."""
        if not isinstance(raw, Mapping):
            return {}
        keys = self.keys
        return {
            key: value[:_MAX_VALUE_LENGTH] if isinstance(value, str) else value
            for key, value in raw.items()
            if key in keys and isinstance(value, _JSON_SCALARS)
        }

    def current(self) -> dict[str, Any]:
        """What the current structlog context would propagate."""
        return self.safe(structlog.contextvars.get_contextvars())

    def stamp_headers(self, headers: dict[str, Any]) -> None:
        """Add the context header to a message being published (``before_task_publish``)."""
        if not self.keys:
            return
        context = self.current()
        if "correlation_id" in self.keys and "correlation_id" not in context:
            context["correlation_id"] = uuid.uuid4().hex
        headers[CONTEXT_HEADER] = context
