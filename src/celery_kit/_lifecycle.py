"""Process lifecycle in, observers' process hooks out; and the worker's logging take-over.

The receivers here are connected by the bridge (``_bridge.connect``), with the task
receivers. Each finds the app from the signal's sender (a worker, its consumer, beat);
a pool process serves the one app its worker runs, and its signals name none, so those
go to every app the process knows.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, signals

from . import _worker_output
from ._dispatch import dispatcher_of, known_apps
from ._guard import add_message_guard
from ._log_observer import LoggingObserver

__all__ = ["LOGGING_RECEIVERS", "RECEIVERS", "instrumentation_of"]

logger = logging.getLogger("celery_kit")


def instrumentation_of(app: Any) -> Any:
    """What ``instrument(app)`` recorded on ``app``, or ``None``."""
    return getattr(app, "_celery_kit_instrumentation", None)


def _process_observers(app: Any) -> tuple[Any, ...]:
    dispatcher = dispatcher_of(app)
    if dispatcher is None:
        return ()
    return tuple(o for o in dispatcher.observers if getattr(o, "observes_processes", False))


def _call_hooks(app: Any, hook: str, *args: Any) -> None:
    for observer in _process_observers(app):
        try:
            getattr(observer, hook)(*args)
        except Exception:
            logger.exception("celery_kit observer %r failed in %s", observer, hook)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if getattr(app, "_celery_kit_dispatcher", None) is None:
        return  # an app the kit does not observe
    add_message_guard(sender)
    _call_hooks(app, "on_worker_init", sender)
    instrumentation = instrumentation_of(app)
    if app is not None and instrumentation is not None:
        # The app's configuration and tasks are final now: log the dangerous combinations.
        from .presets import check

        check(app.conf, tasks=app.tasks.values())


def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    worker = getattr(sender, "controller", sender)  # sent by the worker's consumer
    _call_hooks(getattr(sender, "app", None), "on_worker_ready", worker)


def _on_worker_shutdown(sender: Any = None, **_: Any) -> None:
    _call_hooks(getattr(sender, "app", None), "on_worker_shutdown", sender)


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    _call_hooks(getattr(sender, "app", None), "on_beat_init", sender)


def _on_process_init(**_: Any) -> None:
    for app in known_apps():
        _call_hooks(app, "on_process_init")


def _on_process_shutdown(**_: Any) -> None:
    for app in known_apps():
        _call_hooks(app, "on_process_shutdown")


# -- the worker's logging -------------------------------------------------------------------------


def _logging_apps(preferred: Any = None) -> list[Any]:
    """Instrumented apps with logging on; ``preferred`` (the worker's app) first."""
    apps = [app for app in known_apps() if getattr(instrumentation_of(app), "log_observer", None) is not None]
    first = instrumentation_of(preferred if preferred is not None else current_app)
    return sorted(apps, key=lambda app: instrumentation_of(app) is not first)


def _take_over(app: Any, loglevel: Any, logfile: Any) -> bool:
    apps = _logging_apps(app)
    if not apps:
        return False
    from ._worker_logging import take_over

    observers: list[LoggingObserver] = [instrumentation_of(a).log_observer for a in apps]
    take_over(
        observers, json=instrumentation_of(apps[0]).options["json_logs"], loglevel=loglevel, logfile=logfile
    )
    return True


def _on_setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    """Celery's ``setup_logging``, worker and beat only: with a receiver connected, Celery
    leaves logging to its receivers. Connected only while an app is instrumented with
    ``logging=True`` (:data:`LOGGING_RECEIVERS`)."""
    _take_over(None, loglevel, logfile)


def _on_celeryd_init(sender: Any = None, instance: Any = None, options: Any = None, **_: Any) -> None:
    """The same take-over before the worker checks its privileges: Celery warns there
    (running as root) before it sends ``setup_logging``. A ``--logfile`` (which Celery
    names per node) waits for ``setup_logging``."""
    options = options or {}
    if not options.get("logfile"):
        _take_over(getattr(instance, "app", None), options.get("loglevel"), None)


RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.worker_init, _on_worker_init, "worker_init"),
    (signals.worker_ready, _on_worker_ready, "worker_ready"),
    (signals.worker_shutdown, _on_worker_shutdown, "worker_shutdown"),
    (signals.worker_process_init, _on_process_init, "process_init"),
    (signals.worker_process_shutdown, _on_process_shutdown, "process_shutdown"),
    (signals.beat_init, _on_beat_init, "beat_init"),
    (signals.celeryd_after_setup, _worker_output.log_banner, "banner"),
)
#: Connected while some app is instrumented with ``logging=True``: a ``setup_logging``
#: receiver tells Celery not to configure logging itself.
LOGGING_RECEIVERS: tuple[tuple[Any, Any, str], ...] = (
    (signals.setup_logging, _on_setup_logging, "setup_logging"),
    (signals.celeryd_init, _on_celeryd_init, "celeryd_init"),
)
