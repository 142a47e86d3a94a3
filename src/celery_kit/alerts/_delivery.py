"""Delivery off the task's path: a bounded queue and one daemon thread per process.

Submitting never blocks and never raises; the thread applies the throttle, the per-sink
rate limit (:mod:`celery_kit.alerts._ratelimit`: per process, or shared through Redis)
and the sinks' own timeouts, and reports every outcome (``sent``,
``suppressed``, ``failed``) to a callback -- the ``celery_kit_alerts_total`` counter when
metrics are on. The thread is started lazily in each process (a forked pool process gets
its own), and :meth:`AlertDelivery.close` drains what is queued when a process exits.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from ._model import Alert
from ._ratelimit import LocalRateLimit, RateLimit
from ._sinks import Alerter
from ._throttle import Throttle

__all__ = ["AlertDelivery"]

logger = logging.getLogger("celery_kit.alerts")
ResultCallback = Callable[[str, str], None]


class AlertDelivery:
    def __init__(
        self,
        sinks: Sequence[Alerter],
        throttle: Throttle,
        *,
        rate_limit_per_minute: float = 30.0,
        queue_size: int = 1000,
        flush_interval: float = 1.0,
        on_result: ResultCallback | None = None,
        flush_on_close: bool = True,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self.throttle = throttle
        self.rate_limit_per_minute = rate_limit_per_minute
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.on_result = on_result
        self.flush_on_close = flush_on_close
        self._pid: int | None = None
        self._queue: queue.Queue[Alert | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        #: Per sink; ``rate_limit_per_minute`` per process unless a (shared) limit is given.
        self.rate_limit: RateLimit = rate_limit or LocalRateLimit(rate_limit_per_minute)
        self._start_lock = threading.Lock()

    # -- any thread ---------------------------------------------------------------------------

    def submit(self, alert: Alert) -> None:
        """Queue ``alert``; never blocks, never raises."""
        try:
            self.start()
            self._queue.put_nowait(alert)
        except queue.Full:
            self._record("queue", "failed")
            logger.warning("alert queue full (%s); dropped alert: %s", self.queue_size, alert.summary)
        except Exception:  # pragma: no cover - defensive: alerting must never break a task
            logger.exception("could not queue alert")

    def start(self) -> None:
        """Start this process's delivery thread (again, after a fork)."""
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != os.getpid():
                self._queue = queue.Queue(self.queue_size)  # the parent's may hold a lock
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="celery-kit-alerts", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (and, with a per-process throttle, pending digests)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid() or not thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    # -- the delivery thread ----------------------------------------------------------------------

    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval
        while True:
            timeout = max(0.0, next_flush - time.monotonic())
            try:
                alert = self._queue.get(timeout=timeout)
            except queue.Empty:
                alert = None
                stopping = False
            else:
                stopping = alert is None
            if alert is not None:
                self._handle(alert)
            if stopping or time.monotonic() >= next_flush:
                self._flush(force=stopping and self.flush_on_close)
                next_flush = time.monotonic() + self.flush_interval
            if stopping:
                return

    def _handle(self, alert: Alert) -> None:
        try:
            admitted = self.throttle.admit(alert)
        except Exception:
            logger.exception("alert throttle failed; sending the alert unthrottled")
            admitted = True
        if admitted:
            self._deliver(alert)
        else:
            for sink in self.sinks:
                self._record(sink.name, "suppressed")

    def _flush(self, *, force: bool) -> None:
        try:
            digests = self.throttle.due_digests(force=force)
        except Exception:
            logger.exception("could not read pending alert digests")
            return
        for digest in digests:
            self._deliver(digest)

    def _deliver(self, alert: Alert) -> None:
        for sink in self.sinks:
            if not self._take(sink.name):
                self._record(sink.name, "suppressed")
                logger.warning(
                    "alert rate limit of sink %s reached; suppressed: %s", sink.name, alert.summary
                )
                continue
            try:
                sink.send(alert)
            except Exception:
                self._record(sink.name, "failed")
                logger.exception("alert sink %s failed to send: %s", sink.name, alert.summary)
            else:
                self._record(sink.name, "sent")

    def _take(self, sink: str) -> bool:
        try:
            return self.rate_limit.take(sink)
        except Exception:  # pragma: no cover - defensive: a broken limiter must not stop delivery
            logger.exception("alert rate limit failed; sending unlimited")
            return True

    def _record(self, sink: str, result: str) -> None:
        if self.on_result is not None:
            try:
                self.on_result(sink, result)
            except Exception:  # pragma: no cover - a broken metrics callback must not stop delivery
                logger.exception("alert result callback failed")
