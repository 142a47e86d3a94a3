"""Beat heartbeat: the scheduler's ``tick`` records that it ran.

``celery beat`` runs one loop: ``tick()`` (send what is due, return how long to sleep, at
most ``max_interval``), sleep, repeat. A ``beat_init`` receiver wraps the scheduler's
``tick`` so each completed tick writes the beat state file with its time and
``max_interval``. A beat that stops ticking for ``max(2 * max_interval, floor) + grace``
is stale.

**Standby.** A second beat instance that waits for a lock (celery-redbeat blocks in its
own ``beat_init`` receiver until it holds the lock; other schedulers skip work in
``tick``) must be live -- restarting it would not help -- but not ready. The model is
generic: from ``beat_init`` until the first tick the phase is ``standby``, and a small
keep-alive thread refreshes the file so a frozen process still goes stale. A scheduler
that keeps ticking while it is not the active one can say so by setting
``scheduler.celery_kit_standby = True``; its ticks then keep the phase ``standby``.
The kit's ``beat_init`` receiver is connected when the app is instrumented (its module
imported), so it runs before receivers connected later (RedBeat's is connected when its
scheduler module is imported, which happens when beat creates the scheduler).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ._state import SCHEMA_VERSION, process_start_stamp, write_state

__all__ = ["BeatHeart"]

logger = logging.getLogger("celery_kit")


class BeatHeart:
    """The state of one beat process and the writer of its file."""

    #: Ticks may come back to back when many entries are due; one write per this many
    #: seconds is plenty for a probe that allows minutes.
    MIN_WRITE_INTERVAL = 0.5

    def __init__(self, path: str, *, max_interval: float, keepalive: float) -> None:
        self.path = path
        self.pid = os.getpid()
        self.start_stamp = process_start_stamp(self.pid)
        self.max_interval = max_interval
        self.keepalive = keepalive
        self.phase = "standby"
        self.ticks = 0
        self.last = time.monotonic()
        self.next_tick_in: float | None = None
        self._written = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failed = False

    def start_keepalive(self) -> None:
        """Refresh the file while no tick has happened yet (standby)."""

        def run() -> None:
            while not self._stop.wait(self.keepalive):
                if self.ticks:
                    return
                self.last = time.monotonic()
                self.write()

        threading.Thread(target=run, name="celery-kit-beat-keepalive", daemon=True).start()

    def ticked(self, max_interval: float, next_tick_in: Any, standby: bool) -> None:
        now = time.monotonic()
        first = not self.ticks
        self.ticks += 1
        self.last = now
        self.max_interval = max_interval
        self.next_tick_in = float(next_tick_in) if isinstance(next_tick_in, (int, float)) else None
        phase = "standby" if standby else "running"
        if first or phase != self.phase or now - self._written >= self.MIN_WRITE_INTERVAL:
            self.phase = phase
            self._stop.set()
            self.write()

    def write(self) -> None:
        with self._lock:
            self._written = time.monotonic()
            state = {
                "v": SCHEMA_VERSION,
                "kind": "beat",
                "pid": self.pid,
                "start_stamp": self.start_stamp,
                "phase": self.phase,
                "ts": time.time(),
                "mono": self.last,
                "max_interval": self.max_interval,
                "next_tick_in": self.next_tick_in,
                "ticks": self.ticks,
            }
            try:
                write_state(self.path, state)
            except Exception as exc:
                if not self._failed:
                    logger.warning("celery_kit cannot write the beat health file %s: %s", self.path, exc)
                self._failed = True
            else:
                self._failed = False


def start_beat_heart(service: Any, setup: Any) -> None:
    """Beat starts (the health observer's ``on_beat_init``): write its state, keep it fresh."""
    scheduler = service.scheduler
    heart = BeatHeart(setup.beat_file(), max_interval=float(scheduler.max_interval), keepalive=setup.interval)
    heart.write()
    heart.start_keepalive()
    tick = scheduler.tick

    def recorded_tick(*args: Any, **kwargs: Any) -> Any:
        interval = tick(*args, **kwargs)
        heart.ticked(
            float(scheduler.max_interval), interval, bool(getattr(scheduler, "celery_kit_standby", False))
        )
        return interval

    scheduler.tick = recorded_tick
    service._celery_kit_health = heart
