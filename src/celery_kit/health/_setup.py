"""``install(app)``: wire the worker heartbeat step and the beat heart into one app."""

from __future__ import annotations

import math
from typing import Any

from .._errors import ConfigurationError
from .._events import TaskEvent
from .._observer import Observer
from ._beat import start_beat_heart
from ._state import default_beat_file, default_worker_file
from ._step import Heartbeat, solo_task_finished, solo_task_started

__all__ = ["DEFAULT_INTERVAL", "HealthSetup", "install"]

#: Seconds between beats: small next to the default 30 s max age, cheap (one small file).
DEFAULT_INTERVAL = 2.0


class HealthSetup(Observer):
    """One app's health configuration, and the observer that feeds the hearts.

    The worker's heart is a consumer bootstep (``_step.py``) that the pool reports to;
    in a solo worker, where no pool reports, the task hooks tell it when a task starts
    and ends. Beat's heart starts at ``on_beat_init``.
    """

    def __init__(
        self, app: Any, *, state_file: str | None, beat_state_file: str | None, interval: float
    ) -> None:
        self.app = app
        self.state_file = state_file
        self.beat_state_file = beat_state_file
        self.interval = interval

    def worker_file(self, nodename: str) -> str:
        """The worker's state file; ``%n``, ``%h`` and ``%d`` expand as in Celery's ``--logfile``."""
        if self.state_file is None:
            return default_worker_file(nodename)
        from celery.utils.nodenames import node_format

        return str(node_format(self.state_file, nodename))

    def beat_file(self) -> str:
        return self.beat_state_file or default_beat_file()

    def on_started(self, event: TaskEvent) -> None:
        solo_task_started(event.task, event.task_id)

    def _finished(self, event: TaskEvent) -> None:
        solo_task_finished()

    on_succeeded = on_retrying = on_failed = on_rejected = on_ignored = _finished

    def on_beat_init(self, beat: Any) -> None:
        start_beat_heart(beat, self)

    def remove(self) -> None:
        """Take the heartbeat out of the app's workers (``uninstrument``)."""
        self.app.steps["consumer"].discard(Heartbeat)
        if getattr(self.app, "_celery_kit_health", None) is self:
            del self.app._celery_kit_health


def install(
    app: Any,
    *,
    state_file: str | None = None,
    beat_state_file: str | None = None,
    interval: float = DEFAULT_INTERVAL,
) -> HealthSetup:
    """Add the heartbeat to ``app``'s workers and beat; idempotent.

    Called by :func:`celery_kit.instrument` (``health=True``); call it directly when you
    want the probes without the other observers.

    Args:
        state_file: where workers write their state. ``%n`` (node name), ``%h`` (host)
            and ``%d`` (domain) are expanded. Default: ``$CELERY_KIT_HEALTH_FILE``, else
            ``<tmp>/celery-kit-health/worker-<nodename>.json``.
        beat_state_file: where beat writes. Default: ``$CELERY_KIT_HEALTH_BEAT_FILE``, else
            ``<tmp>/celery-kit-health/beat.json``.
        interval: seconds between beats.

    Raises:
        ConfigurationError: ``interval`` is not a positive number of seconds.
    """
    existing: HealthSetup | None = getattr(app, "_celery_kit_health", None)
    if existing is not None:
        return existing
    if not isinstance(interval, (int, float)) or not math.isfinite(interval) or interval <= 0:
        raise ConfigurationError(
            f"health interval must be a positive number of seconds, got {interval!r}; "
            f"the default ({DEFAULT_INTERVAL:g}) suits probes with a max age of 30 s."
        )
    from .._bridge import dispatcher_for

    setup = HealthSetup(app, state_file=state_file, beat_state_file=beat_state_file, interval=float(interval))
    app._celery_kit_health = setup
    app.steps["consumer"].add(Heartbeat)
    dispatcher_for(app).subscribe(setup)
    return setup
