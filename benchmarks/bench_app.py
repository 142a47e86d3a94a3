"""The variants under comparison, as Celery apps built from a name.

Every variant runs the same task body on the same 3-field email payload (and a heavier
50-item payload): it counts its completion in Redis, so end-to-end runs are counted from
the worker side, with results ignored. Only the kit variants import ``celery_kit``: a
plain Celery process has none of its signal receivers.
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import IO, Any

import redis
from celery import Celery
from pydantic import BaseModel

VARIANTS = ("plain", "pydantic", "kit", "kit_full")
#: ``plain`` with Celery's task events on, as Flower and event-based exporters need them:
#: ``worker_send_task_events`` (``celery worker -E``) and ``task_send_sent_event`` on the
#: producer. Measured end to end only: ``apply()`` sends no task events.
EVENTS = "plain_events"
#: ``kit_full`` with ``bench.send`` unique per ``subject`` (one Redis lock per message), for
#: the end-to-end Redis run; the locks live in ``BENCH_LOCK_URL`` (default: the bench Redis).
UNIQUE = "kit_full+unique"
#: ``kit+<part>``: ``kit`` with one part of ``instrument()`` on (benchmarks/instructions.py).
INSTRUMENT_PARTS = ("logging", "metrics", "alerts", "health")
SMALL = {"to": "ada@example.com", "subject": "Hello", "body": "Hi Ada, your report is ready."}
HEAVY = {"order_id": 7, "items": [{"sku": f"sku-{i}", "quantity": i, "price": 1.5 * i} for i in range(50)]}


class Email(BaseModel):
    to: str
    subject: str
    body: str


class Item(BaseModel):
    sku: str
    quantity: int
    price: float


class Order(BaseModel):
    order_id: int
    items: list[Item]


def build(variant: str, broker_url: str, queue: str, counter_url: str | None, counter_key: str) -> Celery:
    app = Celery(f"bench_{variant}", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=4,
        task_soft_time_limit=60,
        task_time_limit=120,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if variant == EVENTS:
        app.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    counter = redis.Redis.from_url(counter_url) if counter_url else None

    def done() -> None:
        if counter is not None:
            counter.incr(counter_key)

    if variant in ("plain", EVENTS):

        @app.task(name="bench.send", shared=False)  # type: ignore[untyped-decorator]
        def send(to: str, subject: str, body: str) -> None:
            done()

        @app.task(name="bench.order", shared=False)  # type: ignore[untyped-decorator]
        def order(order_id: int, items: list[dict[str, Any]]) -> None:
            done()

    elif variant == "pydantic":

        @app.task(name="bench.send", shared=False, pydantic=True)  # type: ignore[untyped-decorator]
        def send(payload: Email) -> None:
            done()

        @app.task(name="bench.order", shared=False, pydantic=True)  # type: ignore[untyped-decorator]
        def order(payload: Order) -> None:
            done()

    else:
        from celery_kit import instrument, validated_task

        port = int(os.environ.get("BENCH_METRICS_PORT", "0"))
        send_options: dict[str, Any] = {}
        if variant in ("kit_full", UNIQUE):
            instrument(app, json_logs=True, metrics_port=port)
            if variant == UNIQUE:
                from celery_kit import Unique

                lock_url = os.environ.get("BENCH_LOCK_URL") or os.environ.get(
                    "BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"
                )
                send_options["unique"] = Unique(on=("subject",), ttl=600, url=lock_url)
        elif variant.startswith("kit+"):  # one part of instrument() on, for the breakdown
            part = variant.removeprefix("kit+")
            if part not in INSTRUMENT_PARTS:
                raise ValueError(f"unknown part {part!r}; choose from {', '.join(INSTRUMENT_PARTS)}")
            parts: dict[str, Any] = {"logging": False, "metrics": False, "alerts": None, "health": False}
            if part == "alerts":
                del parts["alerts"]  # the default: alert events logged
            else:
                parts[part] = True
            instrument(app, json_logs=True, metrics_port=port, **parts)

        @validated_task(app, name="bench.send", shared=False, **send_options)
        def send(payload: Email) -> None:
            done()

        @validated_task(app, name="bench.order", shared=False)
        def order(payload: Order) -> None:
            done()

    return app


def call(variant: str, heavy: bool) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """Task name, args and kwargs: each variant called the way its users call it."""
    payload = HEAVY if heavy else SMALL
    name = "bench.order" if heavy else "bench.send"
    if variant in ("plain", EVENTS):
        return name, (), dict(payload)
    return name, (dict(payload),), {}


def distinct_calls(variant: str, n: int) -> list[tuple[tuple[Any, ...], dict[str, Any]]] | None:
    """For the unique variant: ``n`` calls with a key each (a fresh ``subject``), built
    before the timer starts; ``None`` for the others, which repeat one call."""
    if variant != UNIQUE:
        return None
    run = os.urandom(4).hex()
    return [(({**SMALL, "subject": f"Hello {run}-{i}"},), {}) for i in range(n)]


class ProcessLogging:
    """The logging a variant's worker runs with, set up in the variant's own process.

    A plain Celery worker at ``-l INFO`` writes Celery's "Task ... succeeded" line per
    task through the standard library's logging; a worker with ``instrument(app)``
    writes the kit's JSON lifecycle lines instead (``instrument`` turns Celery's
    per-task lines off). Measuring ``plain`` without its line would compare logging
    against no logging. Every line goes to ``/dev/null``: the terminal is not what is
    measured.
    """

    def __init__(self, sink: IO[str] | None = None) -> None:
        from celery.utils.log import ColorFormatter

        self._sink = sink or open(os.devnull, "w")  # noqa: SIM115 -- lives with the process
        handler = std_logging.StreamHandler(self._sink)
        # What `celery worker` installs on the root logger (without colour: not a terminal).
        handler.setFormatter(
            ColorFormatter(Celery(set_as_current=False).conf.worker_log_format, use_color=False)
        )
        self._celery_handler = handler

    def use(self, variant: str, level: int = std_logging.INFO) -> None:
        """Set up the process's logging as ``variant``'s worker would have it, at ``level``."""
        root = std_logging.getLogger()
        if variant in ("kit_full", UNIQUE, "kit+logging"):
            from celery_kit.logging import configure_logging

            root.handlers = []
            configure_logging(json=True, level=level, stream=self._sink)
            per_task_level = std_logging.WARNING  # what instrument() sets
        else:
            root.handlers = [self._celery_handler]
            root.setLevel(level)
            per_task_level = std_logging.NOTSET  # Celery's default: follow the root logger
        for name in ("celery.app.trace", "celery.worker.strategy"):
            std_logging.getLogger(name).setLevel(per_task_level)


if "BENCH_VARIANT" in os.environ:  # imported by a worker process
    app = build(
        os.environ["BENCH_VARIANT"],
        os.environ["BENCH_BROKER_URL"],
        os.environ["BENCH_QUEUE"],
        os.environ["BENCH_COUNTER_URL"],
        os.environ["BENCH_COUNTER_KEY"],
    )
