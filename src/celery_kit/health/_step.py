"""The worker heartbeat: a consumer bootstep that beats from the consumer's own loop.

Why a consumer step and not a thread or a worker timer: a thread keeps beating while the
event loop is deadlocked, and a timer on its own thread keeps beating while the consumer
is not consuming. This step schedules its beat on the consumer's event loop
(``hub.call_repeatedly`` when the worker runs the asynchronous loop -- prefork, solo and
threads on Redis and RabbitMQ -- or ``consumer.call_soon`` fed by the timer for the
blocking loop of gevent/eventlet and non-asynchronous transports), so the beat advances
only while the loop turns. Celery registers these entries again on every (re)connection
(``register_with_event_loop``) and cancels them when the connection fails, so the beat
restarts on every reconnect by construction.

Phases: ``starting`` (bootsteps running), ``consuming`` (the loop beat at least once
since the last connect), ``reconnecting`` (the connection failed; Celery is retrying),
``stopping`` (warm shutdown). The step's ``stop`` hook tells a reconnect from a shutdown
by the consumer blueprint's state: Celery restarts the steps with the blueprint still
``RUN`` after a connection error, and closes it first on shutdown.

The solo pool runs each task inside the loop, so the loop cannot beat while a task runs.
``task_prerun`` (which runs in that same thread, just before the task) records
"executing since T with limit L", and ``task_postrun`` clears it: a busy solo worker is
busy, not dead, until its task outlives its limit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from celery import bootsteps
from celery.worker import state as worker_state

from .._pools import pool_name
from ._state import SCHEMA_VERSION, process_start_stamp, write_state

__all__ = ["Heartbeat", "WorkerHeart"]

logger = logging.getLogger("celery_kit")


def _snapshot(requests: Any) -> list[Any]:
    """The members of one of Celery's request WeakSets; pool threads may change it meanwhile."""
    for _ in range(5):
        try:
            return list(requests)
        except RuntimeError:  # "set changed size during iteration"
            continue
    return []


def _hard_limit(request: Any, default: float | None) -> float | None:
    hard, soft = getattr(request, "time_limits", (None, None)) or (None, None)
    task = getattr(request, "task", None)
    limit = hard or getattr(task, "time_limit", None) or default
    if limit is None:
        limit = soft or getattr(task, "soft_time_limit", None)
    return float(limit) if limit else None


#: Seconds a solo worker's task runs before the state file says the loop is in it.
EXECUTING_WRITE_DELAY = 0.25


class WorkerHeart:
    """The heartbeat state of one worker's main process, and the writer of its file."""

    def __init__(
        self, path: str, *, node: str, pool: str, interval: float, default_limit: float | None
    ) -> None:
        self.path = path
        self.node = node
        self.pool = pool
        self.interval = interval
        self.default_limit = default_limit
        self.pid = os.getpid()
        self.start_stamp = process_start_stamp(self.pid)
        self.phase = "starting"
        self.phase_since = time.monotonic()
        self.consumed_once = False
        self.restarts = 0
        self.last_beat = time.monotonic()
        self.accepted_total = worker_state.all_total_count[0]
        self.accepted_changed = time.monotonic()
        self.waiting_since: float | None = None
        self.executing: dict[str, Any] | None = None
        self.consumer: Any = None
        self._counts: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._write_failed = False
        self._watcher: threading.Thread | None = None
        #: The ``executing`` entry the watcher wrote, until the task ends.
        self._written_task: dict[str, Any] | None = None
        self._task_started = threading.Event()

    # -- transitions ------------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.phase_since = time.monotonic()
        self.write()

    def connection_lost(self) -> None:
        """The consumer is restarting after a connection error."""
        if self.phase == "consuming":
            self.restarts += 1
            self.set_phase("reconnecting")
        else:  # failed again while connecting: the outage started when it first failed
            self.write()

    def beat(self) -> None:
        """Runs on the consumer's event loop: everything it records is what the loop sees now."""
        now = time.monotonic()
        wall = time.time()
        self.last_beat = now
        if self.phase in ("starting", "reconnecting"):
            self.consumed_once = True
            self.phase = "consuming"
            self.phase_since = now
        self._counts = self._measure(now, wall)
        self.write()

    def task_started(self, task: Any, task_id: str | None) -> None:
        """Solo pool only: the loop is about to block in this task.

        Nothing is written here: a write per task (an atomic file replace, hundreds of
        microseconds) would double a short task's cost. The watcher thread writes the
        ``executing`` entry once the task has run for :data:`EXECUTING_WRITE_DELAY`
        seconds -- long before any probe could call the blocked loop stale -- so only a
        task long enough to matter to a probe costs a write.
        """
        request = getattr(task, "request", None)
        limits = getattr(request, "timelimit", None) or (None, None)
        limit = limits[0] or getattr(task, "time_limit", None) or self.default_limit
        limit = limit or limits[1] or getattr(task, "soft_time_limit", None)
        self.last_beat = now = time.monotonic()
        self.executing = {
            "task": getattr(task, "name", "?"),
            "id": task_id,
            "since": now,
            "time_limit": float(limit) if limit else None,
        }
        self._watch()

    def task_finished(self) -> None:
        """Solo pool only: back in the loop (this is also a beat). A task the file shows as
        executing is written off at once -- a probe must not see a finished task near its
        limit as a stalled pool; a short one the file never showed waits for the next beat."""
        self.executing = None
        self.last_beat = time.monotonic()
        if self._written_task is not None:
            self._written_task = None
            self.write()

    def _watch(self) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(
                target=self._write_long_tasks, name="celery_kit-health-solo", daemon=True
            )
            self._watcher.start()
        self._task_started.set()

    def _write_long_tasks(self) -> None:
        while True:
            self._task_started.wait()
            self._task_started.clear()
            started = self.executing
            time.sleep(EXECUTING_WRITE_DELAY)
            if started is not None and self.executing is started:
                self._written_task = started
                self.write()

    # -- measuring and writing --------------------------------------------------------------

    def _measure(self, now: float, wall: float) -> dict[str, Any]:
        active = _snapshot(worker_state.active_requests)
        reserved = _snapshot(worker_state.reserved_requests)
        running = set(map(id, active))
        waiting = sum(1 for r in reserved if id(r) not in running)
        accepted = worker_state.all_total_count[0]
        if accepted != self.accepted_total:
            self.accepted_total = accepted
            self.accepted_changed = now
        pool = getattr(self.consumer, "pool", None)
        concurrency = getattr(pool, "num_processes", None) or getattr(pool, "limit", None) or 0
        free = max(int(concurrency) - len(active), 0)
        if waiting and free:
            if self.waiting_since is None:
                self.waiting_since = now
        else:
            self.waiting_since = None
        oldest: dict[str, Any] | None = None
        deadline: dict[str, Any] | None = None
        for request in active:
            started = getattr(request, "time_start", None)
            if not started:
                continue
            since = now - max(wall - float(started), 0.0)
            limit = _hard_limit(request, self.default_limit)
            entry = {"task": request.name, "id": request.id, "since": since, "time_limit": limit}
            if oldest is None or since < oldest["since"]:
                oldest = entry
            if limit is not None and (
                deadline is None or since + limit < deadline["since"] + deadline["time_limit"]
            ):
                deadline = entry
        processes = getattr(getattr(pool, "_pool", None), "_pool", None) or ()
        return {
            "active": len(active),
            "reserved": len(reserved),
            "waiting": waiting,
            "free_slots": free,
            "concurrency": int(concurrency),
            "children": [p.pid for p in processes if getattr(p, "pid", None)],
            "oldest_active": oldest,
            "next_deadline": deadline,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "kind": "worker",
            "pid": self.pid,
            "start_stamp": self.start_stamp,
            "node": self.node,
            "pool": self.pool,
            "interval": self.interval,
            "phase": self.phase,
            "phase_since": self.phase_since,
            "consumed_once": self.consumed_once,
            "restarts": self.restarts,
            "ts": time.time(),
            "mono": self.last_beat,
            "accepted_total": self.accepted_total,
            "accepted_changed": self.accepted_changed,
            "waiting_since": self.waiting_since,
            "executing": self.executing,
            **self._counts,
        }

    def write(self) -> None:
        """Never raises: a full disk must not take the worker's loop down with it."""
        with self._lock:
            try:
                write_state(self.path, self.snapshot())
            except Exception as exc:
                if not self._write_failed:
                    logger.warning("celery_kit cannot write the health state file %s: %s", self.path, exc)
                self._write_failed = True
            else:
                self._write_failed = False


#: The heart of this process when its pool is solo (the signal receivers act on it).
_solo_heart: WorkerHeart | None = None


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep writing the worker's health state file from the event loop."""

    label = "celery_kit health"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.heart: WorkerHeart | None = None
        self._timer_entry: Any = None
        setup = getattr(c.app, "_celery_kit_health", None)
        if setup is None:
            return
        controller = getattr(c, "controller", None)
        pool = pool_name(controller) if controller is not None else type(c.pool).__module__.rsplit(".", 1)[-1]
        limit = c.app.conf.task_time_limit
        self.heart = WorkerHeart(
            setup.worker_file(c.hostname),
            node=c.hostname,
            pool=pool,
            interval=setup.interval,
            default_limit=float(limit) if limit else None,
        )
        self.heart.write()
        global _solo_heart
        _solo_heart = self.heart if pool == "solo" else None

    def start(self, c: Any) -> None:
        """After the task consumer started, on every (re)connect."""
        heart = self.heart
        if heart is None:
            return
        heart.consumer = c
        if c.hub is None:  # blocking loop: the timer only asks; the loop does the beat
            pending = threading.Event()

            def run() -> None:
                pending.clear()
                heart.beat()

            def request() -> None:
                if not pending.is_set():
                    pending.set()
                    c.call_soon(run)

            request()
            self._timer_entry = c.timer.call_repeatedly(heart.interval, request)

    def register_with_event_loop(self, c: Any, hub: Any) -> None:
        """Called by Celery's asynchronous loop each time it starts, i.e. per connection."""
        if self.heart is not None:
            hub.call_soon(self.heart.beat)
            hub.call_repeatedly(self.heart.interval, self.heart.beat)

    def stop(self, c: Any) -> None:
        if self._timer_entry is not None:
            with contextlib.suppress(Exception):  # already gone with the timer
                c.timer.cancel(self._timer_entry)
            self._timer_entry = None
        if self.heart is None:
            return
        if c.blueprint.state == bootsteps.RUN:
            self.heart.connection_lost()  # Celery restarts the steps to reconnect
        else:
            self.heart.set_phase("stopping")

    def shutdown(self, c: Any) -> None:
        if self.heart is not None:
            self.heart.set_phase("stopping")


def solo_task_started(task: Any, task_id: str | None) -> None:
    """A task started in this process: told the heart of a solo worker (the health
    observer's hook), where no pool reports its processes' work."""
    heart = _solo_heart
    if heart is not None and heart.pid == os.getpid():
        heart.task_started(task, task_id)


def solo_task_finished() -> None:
    heart = _solo_heart
    if heart is not None and heart.pid == os.getpid():
        heart.task_finished()
