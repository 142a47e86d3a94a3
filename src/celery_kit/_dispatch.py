"""The dispatcher: one per app, fanning each :class:`~celery_kit.TaskEvent` out to the
observers that read its type.

Pure fan-out: it connects no signal (the bridge does, ``_bridge.py``) and keeps no
state beyond its observers. The apps that have one are held weakly, so an app that is
dropped is not kept alive by the kit.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._events import EventType, Subscriber, TaskEvent

__all__ = ["Dispatcher", "dispatcher_of", "forget_app", "known_apps", "publishing_app", "register_app"]

logger = logging.getLogger("celery_kit")

#: The attribute of an app that holds its dispatcher.
_ATTRIBUTE = "_celery_kit_dispatcher"


class Dispatcher:
    """Fans task events out to the observers subscribed for one app.

    An observer may declare the event types it reads as an ``event_types`` attribute (a
    collection of :class:`EventType`; :class:`celery_kit.Observer` derives it from the
    hooks a subclass overrides); it is then called for those only, and an event type no
    observer reads is not even built (:meth:`wants`). Without the attribute an observer
    gets every event.
    """

    def __init__(self) -> None:
        self._observers: tuple[Subscriber, ...] = ()
        self._routes: dict[EventType, tuple[Subscriber, ...]] = {}
        #: What adds headers to each message the app publishes (the logging observer's
        #: propagated context): ``stamp_headers(headers)`` of the observers that have one.
        self.stampers: tuple[Callable[[dict[str, Any]], None], ...] = ()
        self._lock = threading.Lock()

    @property
    def observers(self) -> tuple[Subscriber, ...]:
        return self._observers

    def wants(self, event_type: EventType) -> bool:
        """Whether any subscribed observer reads events of ``event_type``."""
        return event_type in self._routes

    def _set_observers(self, observers: tuple[Subscriber, ...]) -> None:
        routes: dict[EventType, tuple[Subscriber, ...]] = {}
        for event_type in EventType:
            takers = tuple(o for o in observers if event_type in getattr(o, "event_types", (event_type,)))
            if takers:
                routes[event_type] = takers
        self._routes = routes
        self.stampers = tuple(
            stamp for o in observers if (stamp := getattr(o, "stamp_headers", None)) is not None
        )
        self._observers = observers

    def subscribe(self, observer: Subscriber) -> Subscriber:
        """Add ``observer`` (idempotent); returns it, so it works as a decorator.

        ``observer`` is a :class:`celery_kit.Observer`, or any callable taking a
        :class:`TaskEvent` (optionally with an ``event_types`` attribute).
        """
        with self._lock:
            if observer not in self._observers:
                self._set_observers((*self._observers, observer))
        return observer

    def unsubscribe(self, observer: Subscriber) -> None:
        with self._lock:
            self._set_observers(tuple(o for o in self._observers if o is not observer))

    def emit(self, event: TaskEvent) -> None:
        for observer in self._routes.get(event.type, ()):
            try:
                observer(event)
            except Exception:
                logger.exception(
                    "celery_kit observer %r failed on %s event of task %s[%s]",
                    observer,
                    event.type.value,
                    event.task_name,
                    event.task_id,
                )


#: The app a kit task is publishing through, for the publish signals (which name no app).
publishing_app: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "celery_kit_publishing_app", default=None
)

_apps_lock = threading.Lock()
_known_apps: weakref.WeakSet[Any] = weakref.WeakSet()


def dispatcher_of(app: Any) -> Dispatcher | None:
    """The dispatcher of ``app`` if it has one with observers; never creates one."""
    dispatcher: Dispatcher | None = getattr(app, _ATTRIBUTE, None)
    return dispatcher if dispatcher is not None and dispatcher.observers else None


def register_app(app: Any) -> Dispatcher:
    """The dispatcher of ``app``, created (and the app remembered, weakly) on first use."""
    dispatcher: Dispatcher | None = getattr(app, _ATTRIBUTE, None)
    if dispatcher is None:
        with _apps_lock:
            dispatcher = getattr(app, _ATTRIBUTE, None)
            if dispatcher is None:
                dispatcher = Dispatcher()
                setattr(app, _ATTRIBUTE, dispatcher)
                _known_apps.add(app)
    return dispatcher


def forget_app(app: Any) -> None:
    """Drop ``app``'s dispatcher (``uninstrument``)."""
    with _apps_lock:
        _known_apps.discard(app)
        if getattr(app, _ATTRIBUTE, None) is not None:
            delattr(app, _ATTRIBUTE)


def known_apps() -> list[Any]:
    """Apps that have a dispatcher (weakly held)."""
    return list(_known_apps)
