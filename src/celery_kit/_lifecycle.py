"""Process lifecycle in, observers' process hooks out; and the worker's logging take-over.

The receivers here are connected by the bridge (``_bridge.connect``), with the task
receivers. Each finds the app from the signal's sender (a worker, its consumer, beat).
A pool process serves the one app its worker runs, and its signals name none: the
worker's app, recorded in the main process before the pool forks, is the one whose
observers hear of it -- a second app instrumented in the same module is not told.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app, signals

from . import _worker_output
from ._dispatch import dispatcher_of, known_apps
from ._guard import add_message_guard

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


#: The app this process is a worker of (set at ``celeryd_init``/``worker_init``, in the
#: main process, before the pool forks; inherited by pool processes).
_worker_app: Any = None


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    global _worker_app
    app = getattr(sender, "app", None)
    _worker_app = app
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


def _pool_apps() -> list[Any]:
    return [_worker_app] if _worker_app is not None else known_apps()


def _on_process_init(**_: Any) -> None:
    for app in _pool_apps():
        _call_hooks(app, "on_process_init")


def _on_process_shutdown(**_: Any) -> None:
    for app in _pool_apps():
        _call_hooks(app, "on_process_shutdown")


# -- the worker's logging -------------------------------------------------------------------------


def _logs(app: Any) -> bool:
    return getattr(instrumentation_of(app), "log_observer", None) is not None


def _take_over(app: Any, loglevel: Any, logfile: Any) -> None:
    """Take over this process's logging for ``app`` (a worker's, or beat's), if it logs."""
    instrumentation = instrumentation_of(app)
    if instrumentation is None or instrumentation.log_observer is None:
        return
    from ._worker_logging import take_over

    take_over(
        [instrumentation.log_observer],
        json=instrumentation.options["json_logs"],
        loglevel=loglevel,
        logfile=logfile,
    )


def _on_setup_logging(loglevel: Any = None, logfile: Any = None, **_: Any) -> None:
    """Celery's ``setup_logging``, worker and beat only (its sender names no app: a
    worker's was recorded at ``celeryd_init``; beat's is the current app). Connected only
    while an app is instrumented with ``logging=True`` (:data:`LOGGING_RECEIVERS`)."""
    _take_over(_worker_app if _worker_app is not None else current_app, loglevel, logfile)


def _on_celeryd_init(sender: Any = None, instance: Any = None, options: Any = None, **_: Any) -> None:
    """A worker is being set up (before it checks its privileges and before
    ``setup_logging``): record its app, and take logging over now if that app logs --
    Celery warns there (running as root) before it sends ``setup_logging``. A
    ``--logfile`` (which Celery names per node) waits for ``setup_logging``.

    If the worker's app does not log (``logging=False``) while another app in the module
    does, the ``setup_logging`` receiver is disconnected for this process, so Celery sets
    up its own logging, as it would without the kit.
    """
    global _worker_app
    app = getattr(instance, "app", None)
    _worker_app = app
    if not _logs(app):
        signals.setup_logging.disconnect(_on_setup_logging, dispatch_uid="celery_kit.setup_logging")
        return
    options = options or {}
    if not options.get("logfile"):
        _take_over(app, options.get("loglevel"), None)


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
