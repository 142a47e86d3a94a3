"""``Observer``: the one base class of everything that watches tasks and processes.

An observer overrides the hooks it needs; the rest are no-ops. Task hooks receive one
:class:`~celery_kit.TaskEvent` each, already classified (``kind``, ``final``,
``reason``); process hooks run where the process starts or stops. It is the shape of
dramatiq's middleware, without the ability to change an outcome: an observer that raises
is logged and skipped, it can never fail, retry or delay a task.

The dispatcher routes an event type only to observers that override its hook (an event
type nobody observes is not even built), so an observer costs nothing for what it
ignores.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._events import EventType, TaskEvent

__all__ = ["TASK_HOOKS", "Observer"]

#: The hook each event type calls.
TASK_HOOKS: dict[EventType, str] = {
    EventType.PUBLISHED: "on_published",
    EventType.REFUSED: "on_refused",
    EventType.STARTED: "on_started",
    EventType.SUCCEEDED: "on_succeeded",
    EventType.RETRYING: "on_retrying",
    EventType.FAILED: "on_failed",
    EventType.REJECTED: "on_rejected",
    EventType.IGNORED: "on_ignored",
    EventType.REVOKED: "on_revoked",
    EventType.MESSAGE_REJECTED: "on_message_rejected",
}
_PROCESS_HOOKS = (
    "on_worker_init",
    "on_worker_ready",
    "on_worker_shutdown",
    "on_process_init",
    "on_process_shutdown",
    "on_beat_init",
)


class Observer:
    """Base class of observers: override the hooks you need, add it with
    ``instrument(app, observers=[MyObserver()])``.

    Task hooks run in the process that emitted the event: the pool process for an
    attempt's own events (``started`` and its outcome), the worker's main process for
    hard time limits, lost pool processes, revocations and rejected messages, the
    producer for ``published`` and ``refused``. Keep them quick; hand slow work (a
    network call) to a thread or a queue of your own.
    """

    #: The event types this class handles: those whose hook it overrides.
    event_types: ClassVar[frozenset[EventType]] = frozenset()
    #: Whether it overrides any process hook.
    observes_processes: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_types = frozenset(
            event_type for event_type, hook in TASK_HOOKS.items() if _overrides(cls, hook)
        )
        cls.observes_processes = any(_overrides(cls, hook) for hook in _PROCESS_HOOKS)

    def __call__(self, event: TaskEvent) -> None:
        getattr(self, TASK_HOOKS[event.type])(event)

    # -- task lifecycle (one event each) -----------------------------------------------------

    def on_published(self, event: TaskEvent) -> None:
        """A message was published (producer)."""

    def on_refused(self, event: TaskEvent) -> None:
        """The caller's payload was refused; nothing was published (producer)."""

    def on_started(self, event: TaskEvent) -> None:
        """An attempt started (pool process); ``queue_wait`` says how long it waited."""

    def on_succeeded(self, event: TaskEvent) -> None:
        """An attempt succeeded."""

    def on_retrying(self, event: TaskEvent) -> None:
        """An attempt failed and another one is scheduled (``delay`` seconds from now)."""

    def on_failed(self, event: TaskEvent) -> None:
        """An attempt failed; ``final`` says whether no other attempt follows."""

    def on_rejected(self, event: TaskEvent) -> None:
        """The task raised Celery's ``Reject``."""

    def on_ignored(self, event: TaskEvent) -> None:
        """The task raised Celery's ``Ignore``."""

    def on_revoked(self, event: TaskEvent) -> None:
        """The task was revoked, expired or terminated (worker main process)."""

    def on_message_rejected(self, event: TaskEvent) -> None:
        """The worker discarded a message before any task ran; ``reason`` says why."""

    # -- process lifecycle -------------------------------------------------------------------

    def on_worker_init(self, worker: Any) -> None:
        """A worker of the app starts (its main process, before the pool forks and before
        it consumes)."""

    def on_worker_ready(self, worker: Any) -> None:
        """The worker's pool is up and it consumes (main process)."""

    def on_worker_shutdown(self, worker: Any) -> None:
        """The worker is shutting down (main process, after the pool stopped)."""

    def on_process_init(self) -> None:
        """A pool process of the app's worker started (prefork), before its first task."""

    def on_process_shutdown(self) -> None:
        """A pool process is shutting down (prefork)."""

    def on_beat_init(self, beat: Any) -> None:
        """Celery beat starts for the app."""


Observer.__module__ = "celery_kit"


def _overrides(cls: type, hook: str) -> bool:
    return getattr(cls, hook) is not getattr(Observer, hook)
