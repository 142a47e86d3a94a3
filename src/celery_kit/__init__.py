"""celery_kit: the production glue every Celery service re-writes, written once.

Validated payloads in the caller and on the worker, retry policies on tenacity's wait
strategies, soft-timeout cleanup hooks and one classified event path for observers.

The public names are loaded on first use (PEP 562), all at once: ``python -m
celery_kit.health`` imports this package before the probe, and a probe that imported
Celery, kombu and pydantic would cost half a second of CPU. Importing connects no signal
and changes no logger: the kit connects its receivers when the first app is
instrumented (:func:`instrument`), and :func:`uninstrument` disconnects them.
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing costs the probe CLI 5 ms (type checkers
# treat any constant of this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._bridge import dispatcher_for
    from ._dispatch import Dispatcher
    from ._errors import (
        CeleryKitError,
        ChainPayloadError,
        ConfigurationError,
        DuplicateTaskError,
        MessageRejectedError,
        PayloadTooLargeError,
        PayloadValidationError,
        PermanentError,
    )
    from ._events import EventType, FailureKind, RejectReason, TaskEvent
    from ._instrument import Instrumentation, instrument, uninstrument
    from ._observer import Observer
    from ._payload import ArgumentsError
    from ._retry import RetryPolicy
    from ._task import ValidatedTask, validated_task
    from ._unique import Unique

__version__ = "0.1.0"

#: What docs/api.md documents. ``DEFAULT_MAX_PAYLOAD_BYTES``, ``MAX_PAYLOAD_SETTING`` and
#: ``FIRST_ATTEMPT_HEADER`` stay importable, for settings and tests, without being API.
__all__ = [
    "ArgumentsError",
    "CeleryKitError",
    "ChainPayloadError",
    "ConfigurationError",
    "Dispatcher",
    "DuplicateTaskError",
    "EventType",
    "FailureKind",
    "Instrumentation",
    "MessageRejectedError",
    "Observer",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "PermanentError",
    "RejectReason",
    "RetryPolicy",
    "TaskEvent",
    "Unique",
    "ValidatedTask",
    "__version__",
    "dispatcher_for",
    "instrument",
    "uninstrument",
    "validated_task",
]

#: Where each public name lives; the first access to any of them imports them all.
_EXPORTS = {
    "ArgumentsError": "._payload",
    "CeleryKitError": "._errors",
    "ChainPayloadError": "._errors",
    "ConfigurationError": "._errors",
    "MessageRejectedError": "._errors",
    "DuplicateTaskError": "._errors",
    "PayloadTooLargeError": "._errors",
    "PayloadValidationError": "._errors",
    "PermanentError": "._errors",
    "Dispatcher": "._dispatch",
    "EventType": "._events",
    "FailureKind": "._events",
    "RejectReason": "._events",
    "TaskEvent": "._events",
    "dispatcher_for": "._bridge",
    "Instrumentation": "._instrument",
    "instrument": "._instrument",
    "uninstrument": "._instrument",
    "Observer": "._observer",
    "RetryPolicy": "._retry",
    "DEFAULT_MAX_PAYLOAD_BYTES": "._task",
    "FIRST_ATTEMPT_HEADER": "._task",
    "MAX_PAYLOAD_SETTING": "._task",
    "ValidatedTask": "._task",
    "validated_task": "._task",
    "Unique": "._unique",
}
#: Shown as living in ``celery_kit``, the import path users write.
_REHOMED = (
    "Dispatcher",
    "EventType",
    "FailureKind",
    "Instrumentation",
    "RejectReason",
    "TaskEvent",
    "dispatcher_for",
    "instrument",
    "uninstrument",
    "validated_task",
)


def _load() -> None:
    from importlib import import_module

    namespace = globals()
    for name, module in _EXPORTS.items():
        namespace[name] = getattr(import_module(module, __name__), name)
    for name in _REHOMED:
        namespace[name].__module__ = "celery_kit"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _load()
    return globals()[name]


def __dir__() -> list[str]:
    # What is loaded, not what could be: tools that walk every module's ``dir()`` and
    # ``getattr`` each name (freezegun's ``freeze_time()`` does) must not import the kit,
    # and with it pydantic models, at a moment the caller did not choose.
    return sorted(globals())
