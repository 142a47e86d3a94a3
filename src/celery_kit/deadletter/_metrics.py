"""The dead-letter series, next to the kit's task metrics and with the app's prefix.

* ``<prefix>_dead_letters_stored_total{task}`` -- entries written (a redelivered message
  that replaces its own entry is not counted twice);
* ``<prefix>_dead_letters_replayed_total{task}`` -- replayed messages received by a worker
  (counted where they start, so a replay from a laptop's CLI is counted too);
* ``<prefix>_dead_letters_dropped_total{task}`` -- entries retention dropped;
* ``<prefix>_dead_letter_write_failures_total{task}`` -- entries that could not be
  written (the store was down): each one is logged with the reason, and alerted on;
* ``<prefix>_dead_letters{task}`` -- entries held now, refreshed by the worker's main
  process (and after each write), the gauge the growth alert reads.

Under prefork they are created in multiprocess mode, like every other kit metric, and
served by the kit's metrics endpoint; without ``instrument(metrics=True)`` nothing is
counted.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

__all__ = ["DeadLetterMetrics", "metrics_for"]


class DeadLetterMetrics:
    def __init__(self, registry: CollectorRegistry | None, prefix: str) -> None:
        p = prefix
        self.stored = Counter(
            f"{p}_dead_letters_stored", "Dead letters stored.", ("task",), registry=registry
        )
        self.replayed = Counter(
            f"{p}_dead_letters_replayed",
            "Replayed dead letters received by a worker.",
            ("task",),
            registry=registry,
        )
        self.dropped = Counter(
            f"{p}_dead_letters_dropped",
            "Dead letters dropped by retention (oldest first).",
            ("task",),
            registry=registry,
        )
        self.write_failures = Counter(
            f"{p}_dead_letter_write_failures",
            "Dead letters that could not be written to the store (logged with the reason).",
            ("task",),
            registry=registry,
        )
        self.size = Gauge(
            f"{p}_dead_letters",
            "Dead letters held in the store now.",
            ("task",),
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    def precreate(self, tasks: list[str]) -> None:
        for task in tasks:
            for metric in (self.stored, self.replayed, self.dropped, self.write_failures):
                metric.labels(task)


_lock = threading.Lock()
_cache: dict[tuple[int, str, int], DeadLetterMetrics] = {}


def metrics_for(app: Any) -> DeadLetterMetrics | None:
    """The app's dead-letter series, or ``None`` when the app counts no metrics.

    In multiprocess mode (a prefork worker) the series live in the worker's files, not in
    a registry; in plain mode in the registry the kit's task metrics use.
    """
    setup = getattr(app, "_celery_kit_metrics", None)
    if setup is None:
        return None
    multiprocess = setup.multiprocess_path is not None
    registry = None if multiprocess else (setup.registry if setup.registry is not None else REGISTRY)
    key = (id(registry), str(setup.prefix), int(multiprocess))
    with _lock:
        metrics = _cache.get(key)
        if metrics is None:
            metrics = _cache[key] = DeadLetterMetrics(registry, str(setup.prefix))
    return metrics
