"""A worker's metrics: multiprocess mode under prefork, the endpoint, the per-app setup.

Under the prefork pool each pool process counts in prometheus-client's multiprocess
mode: the worker's main process prepares a private directory (wiped at start, removed
at shutdown) before the pool forks, every gauge declares its multiprocess mode, files of
pool processes that exit are marked dead, and the metrics are served **only** from the
main process, which sums what every process -- dead ones included -- counted. The solo
and threads pools count in plain mode. See :mod:`celery_kit.metrics` for the series.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from celery import bootsteps
from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ._errors import ConfigurationError
from ._events import TaskEvent
from ._observer import Observer
from ._pools import pool_name
from .metrics import MetricsObserver, TaskMetrics

__all__ = ["MetricsServer", "MetricsSetup", "install", "prepare_multiprocess_dir"]

logger = logging.getLogger("celery_kit")

_ALERT_RESULTS = ("sent", "suppressed", "failed")


# -- prefork: multiprocess mode -------------------------------------------------------------


class _DeadProcessSweeper(Collector):
    """Marks pool processes that died without cleaning up (SIGKILL, OOM) as dead.

    Registered before the multiprocess collector, so their live gauges are gone before
    it reads the files.
    """

    _PID = re.compile(r"^gauge_live\w*?_(\d+)\.db$")

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Any]:
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        for name in names:
            match = self._PID.match(name)
            if match and not _alive(int(match.group(1))):
                # A concurrent scrape or the process's own exit may remove the file first.
                with contextlib.suppress(FileNotFoundError):
                    mark_process_dead(int(match.group(1)), self.path)  # type: ignore[no-untyped-call]
        return []


class _MultiProcessCollector(Collector):
    """prometheus-client's multiprocess collector, retried when a file changes mid-read.

    Pool processes come and go while a scrape runs (``worker_max_tasks_per_child``): a
    new one's file may exist before its header is written (``struct.error``), and marking
    one dead deletes its live-gauge files between the collector's listing and its reads.
    """

    def __init__(self, path: str, unset_at_zero: str = "") -> None:
        self.inner = MultiProcessCollector(None, path=path)  # type: ignore[no-untyped-call]
        self.unset_at_zero = unset_at_zero

    def collect(self) -> Iterable[Any]:
        for _ in range(20):
            try:
                return self._without_unset(list(self.inner.collect()))  # type: ignore[no-untyped-call]
            except (FileNotFoundError, struct.error):
                time.sleep(0.005)
        return self._without_unset(list(self.inner.collect()))  # type: ignore[no-untyped-call]

    def _without_unset(self, families: list[Any]) -> list[Any]:
        """Drop the 0 a pool process's file holds for a timestamp gauge between creating
        the series and setting it (another process may read the file in between)."""
        for family in families:
            if family.name == self.unset_at_zero:
                family.samples = [sample for sample in family.samples if sample.value != 0]
        return families


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(nodename: str, base: str | None = None) -> str:
    """Create (wiping any leftovers) this worker instance's private metrics directory and
    switch prometheus-client to multiprocess values before the pool forks."""
    safe = re.sub(r"[^A-Za-z0-9_.@\-]", "_", nodename)
    path = os.path.join(
        base or os.path.join(tempfile.gettempdir(), "celery-kit-metrics"), f"{safe}-{os.getpid()}"
    )
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    _follow_forks()
    values.ValueClass = values.MultiProcessValue(_process_id)  # type: ignore[no-untyped-call]
    return path


_pid = os.getpid()
_fork_hook_registered = False


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _follow_forks() -> None:
    """Keep :func:`_process_id` right in forked children; registered once, by the first
    worker that goes multiprocess (never at import)."""
    global _fork_hook_registered, _pid
    _pid = os.getpid()
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_refresh_pid)
        _fork_hook_registered = True


def _process_id() -> int:
    """``os.getpid()``, which multiprocess values call on every update to notice a fork,
    without a system call each time: the cached pid is refreshed in every forked child."""
    return _pid


# -- exposition -------------------------------------------------------------------------------


class MetricsServer(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: serves ``/metrics`` from the main process only."""

    label = "celery_kit metrics"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.server: Any = None

    def start(self, worker: Any) -> None:
        setup = getattr(worker.app, "_celery_kit_metrics", None)
        if setup is None:
            return
        setup.precreate(worker)  # before the endpoint serves, whoever serves it
        if not setup.port:
            return
        from prometheus_client import start_http_server

        try:
            self.server, _thread = start_http_server(setup.port, setup.host, setup.exposition_registry())
        except OSError as exc:
            raise ConfigurationError(
                f"celery_kit cannot serve metrics on {setup.host}:{setup.port}: {exc}. Another "
                "process holds the port; give each worker its own (instrument(metrics_port=...) "
                "or the celery_kit_metrics_port setting), or 0 to turn the endpoint off."
            ) from exc
        logger.info("serving Prometheus metrics on http://%s:%s/metrics", setup.host, setup.port)

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsSetup(Observer):
    """One app's metrics configuration and state; created by :func:`celery_kit.instrument`.

    The observer on the app's dispatcher: its task hooks hand each event to the counting
    :class:`MetricsObserver` (plain mode, or multiprocess mode once a prefork worker
    chose it); its process hooks set multiprocess mode up and tear it down.
    """

    def __init__(
        self,
        app: Any,
        *,
        port: int | None,
        host: str,
        prefix: str,
        registry: CollectorRegistry | None,
        duration_buckets: Sequence[float],
        queue_wait_buckets: Sequence[float],
        multiprocess_dir: str | None,
    ) -> None:
        self.app = app
        self.port = port
        self.host = host
        self.prefix = prefix
        self.registry = registry
        self.duration_buckets = duration_buckets
        self.queue_wait_buckets = queue_wait_buckets
        self.multiprocess_base = multiprocess_dir
        self.multiprocess_path: str | None = None
        #: Names of the alert sinks whose delivery results are exported at 0 from worker start.
        self.alert_sinks: tuple[str, ...] = ()
        self._observer: MetricsObserver | None = None
        self._lock = threading.Lock()
        #: Pool processes forked once the worker is ready are restarts.
        self._pool_ready = False

    @property
    def observer(self) -> MetricsObserver:
        """The observer, with plain-mode metrics unless the worker chose multiprocess mode."""
        if self._observer is None:
            self._create(self.registry if self.registry is not None else REGISTRY)
        assert self._observer is not None
        return self._observer

    def _create(self, registry: CollectorRegistry | None) -> None:
        with self._lock:
            metrics = _metrics_for(registry, self.prefix, self.duration_buckets, self.queue_wait_buckets)
            if self._observer is None:
                self._observer = MetricsObserver(metrics)
            else:
                self._observer.rebind(metrics)

    # -- task hooks: counted by the observer -------------------------------------------------

    def on_published(self, event: TaskEvent) -> None:
        self.observer.on_published(event)

    def on_refused(self, event: TaskEvent) -> None:
        self.observer.on_refused(event)

    def on_started(self, event: TaskEvent) -> None:
        self.observer.on_started(event)

    def on_succeeded(self, event: TaskEvent) -> None:
        self.observer.on_succeeded(event)

    def _finished(self, event: TaskEvent) -> None:
        self.observer._finished(event)

    on_retrying = on_failed = on_rejected = on_ignored = on_revoked = _finished

    def on_message_rejected(self, event: TaskEvent) -> None:
        self.observer.on_message_rejected(event)

    def count_alert(self, sink: str, result: str) -> None:
        """An alert delivery's result (the alert observer's callback)."""
        self.observer.metrics.alerts.labels(sink, result).inc()

    def exposition_registry(self) -> CollectorRegistry:
        if self.multiprocess_path is None:
            self.observer  # noqa: B018 -- plain mode: make sure the families exist
            return self.registry if self.registry is not None else REGISTRY
        registry = CollectorRegistry()
        registry.register(_DeadProcessSweeper(self.multiprocess_path))
        registry.register(
            _MultiProcessCollector(
                self.multiprocess_path, f"{self.prefix}_task_last_success_timestamp_seconds"
            )
        )
        return registry

    def precreate(self, worker: Any) -> None:
        """Every registered task's series at 0, on the queue it is routed to, if this
        worker consumes that queue. In the main process: under prefork its own file holds
        the zeros, which the exposition sums with what pool processes count."""
        observer = self.observer
        for task, queue in _routed_tasks(worker.app):
            observer.precreate(task, queue)
        for sink in self.alert_sinks:
            for result in _ALERT_RESULTS:
                observer.metrics.alerts.labels(sink, result)

    # -- process hooks --------------------------------------------------------------------------

    def on_worker_init(self, worker: Any) -> None:
        """Before the pool forks: multiprocess mode for prefork, plain mode otherwise."""
        if pool_name(worker) == "prefork":
            self.multiprocess_path = prepare_multiprocess_dir(worker.hostname, self.multiprocess_base)
            self._create(None)  # the files are the registry; the main process sums them

    def on_worker_ready(self, worker: Any) -> None:
        self._pool_ready = True

    def on_process_init(self) -> None:
        if self._pool_ready:
            self.observer.metrics.process_restarts.inc()

    def on_process_shutdown(self) -> None:
        if self.multiprocess_path:
            with contextlib.suppress(FileNotFoundError):  # a scrape may have swept it already
                mark_process_dead(os.getpid(), self.multiprocess_path)  # type: ignore[no-untyped-call]

    def on_worker_shutdown(self, worker: Any) -> None:
        if self.multiprocess_path:
            shutil.rmtree(self.multiprocess_path, ignore_errors=True)

    def remove(self) -> None:
        """Take the metrics endpoint out of the app's workers (``uninstrument``)."""
        self.app.steps["worker"].discard(MetricsServer)
        if getattr(self.app, "_celery_kit_metrics", None) is self:
            del self.app._celery_kit_metrics


def _routed_tasks(app: Any) -> list[tuple[str, str]]:
    """(task name, routing key) of each registered task routed to a queue the worker
    consumes: the ``queue`` label its messages will carry. Celery's own tasks
    (``celery.*``) are left out; a task whose router cannot route it without arguments
    gets its series at its first attempt."""
    queues = app.amqp.queues
    consumed = set(queues.consume_from)
    router = app.amqp.router
    routed: list[tuple[str, str]] = []
    for name in sorted(app.tasks):
        if name.startswith("celery."):
            continue
        task = app.tasks[name]
        options = {
            key: getattr(task, key)
            for key in ("queue", "exchange", "routing_key")
            if getattr(task, key, None)
        }
        try:
            route = router.route(options, name, args=(), kwargs={})
        except Exception:  # a user's router that needs the arguments
            logger.debug(
                "celery_kit: %s has no route without arguments; its series start at its first attempt", name
            )
            continue
        queue = route.get("queue")
        name_of_queue = getattr(queue, "name", None)
        if not isinstance(name_of_queue, str) or name_of_queue not in consumed:
            continue
        exchange_type = getattr(getattr(queue, "exchange", None), "type", "direct") or "direct"
        if exchange_type == "direct" and not (route.get("exchange") and route.get("routing_key")):
            routed.append((name, name_of_queue))  # Celery publishes to the queue by name
        else:
            routed.append((name, str(route.get("routing_key") or queue.routing_key or name_of_queue)))
    return routed


_metrics_cache: dict[tuple[int, str], TaskMetrics] = {}


def _metrics_for(
    registry: CollectorRegistry | None,
    prefix: str,
    duration_buckets: Sequence[float],
    queue_wait_buckets: Sequence[float],
) -> TaskMetrics:
    """Metric families are registered once per registry, however many apps share it."""
    if registry is None:
        return TaskMetrics(None, prefix, duration_buckets, queue_wait_buckets)
    key = (id(registry), prefix)
    if key not in _metrics_cache:
        _metrics_cache[key] = TaskMetrics(registry, prefix, duration_buckets, queue_wait_buckets)
    return _metrics_cache[key]


def install(app: Any, **options: Any) -> MetricsSetup:
    """Wire metrics into ``app``; used by :func:`celery_kit.instrument`."""
    setup = MetricsSetup(app, **options)
    app._celery_kit_metrics = setup
    app.steps["worker"].add(MetricsServer)
    return setup
