"""One variant in its own interpreter, measured on command from ``run.py``.

In production each variant runs in its own process, with only its own imports, signal
receivers and logging: a plain Celery process has none of the kit's receivers, and
Celery skips sending a signal nobody receives. Measuring every variant in one shared
interpreter would charge the kit's costs to plain Celery too. The harness still
interleaves the variants round by round; a process waits on its pipe meanwhile.

Protocol: one JSON command per line on stdin, one JSON answer per line on stdout
(``{"value": ...}`` or ``{"error": ...}``).

    python -m benchmarks.variant_process kit_full                  # serve run.py
    python -m benchmarks.variant_process kit_full --run apply --calls 1000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from typing import Any, TextIO

from celery import Celery

from benchmarks.bench_app import ProcessLogging, build, call, distinct_calls


class VariantProcess:
    def __init__(self, variant: str) -> None:
        self.variant = variant
        self.logging = ProcessLogging()
        self.logging.use(variant)
        self._apps: dict[tuple[str, str], Celery] = {}

    def app(self, broker: str, queue: str) -> Celery:
        key = (broker, queue)
        if key not in self._apps:
            self._apps[key] = build(self.variant, broker, queue, None, "")
        return self._apps[key]

    def apply(self, n: int, heavy: bool, direct: bool, level: str) -> float:
        """µs per ``task.apply()`` (or direct ``task(...)``) call, logging at ``level``."""
        self.logging.use(self.variant, logging.getLevelName(level))
        name, args, kwargs = call(self.variant, heavy)
        task = self.app("memory://", f"bench-{self.variant}").tasks[name]
        started = time.perf_counter()
        if direct:
            for _ in range(n):
                task(*args, **kwargs)
        else:
            for _ in range(n):
                task.apply(args, kwargs)
        return (time.perf_counter() - started) / n * 1e6

    def publish(self, broker: str, queue: str, n: int, purge: bool) -> float:
        """Messages per second published with ``delay``-style ``apply_async``; the
        queue is purged afterwards unless a worker is to consume them."""
        self.logging.use(self.variant)
        app = self.app(broker, queue)
        name, args, kwargs = call(self.variant, False)
        task = app.tasks[name]
        distinct = distinct_calls(self.variant, n)
        started = time.perf_counter()
        if distinct is None:
            for _ in range(n):
                task.apply_async(args, kwargs)
        else:  # one lock per message: a fresh key each
            for args, kwargs in distinct:
                task.apply_async(args, kwargs)
        elapsed = time.perf_counter() - started
        if purge:
            with app.connection_for_write() as conn:
                conn.default_channel.queue_purge(queue)
        return n / elapsed

    def prepare(self, broker: str, queue: str) -> None:
        """Build the app and open its producer connection before anything is timed."""
        app = self.app(broker, queue)
        with app.producer_or_acquire() as producer:
            producer.connection.ensure_connection()

    def delete_queue(self, broker: str, queue: str) -> None:
        app = self.app(broker, queue)
        with app.connection_for_write() as conn, contextlib.suppress(*conn.channel_errors):
            conn.default_channel.queue_delete(queue)


def serve(variant: str, commands: TextIO, answers: TextIO) -> None:
    process = VariantProcess(variant)
    for line in commands:
        command: dict[str, Any] = json.loads(line)
        op = command.pop("op")
        try:
            value = getattr(process, op)(**command)
            answer: dict[str, Any] = {"value": value}
        except Exception:
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variant")
    parser.add_argument("--run", choices=("apply", "publish"), help="run once and exit (no command loop)")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--level", default="INFO")
    options = parser.parse_args()
    if options.run is None:
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
        sys.stdout = sys.stderr  # anything else printed must not corrupt the answers
        serve(options.variant, sys.stdin, answers)
        return
    # One warm-up pass, then the counted calls: run twice, with --calls N and 0, the
    # difference is what N calls cost (benchmarks/instructions.py).
    process = VariantProcess(options.variant)
    for calls in (WARM_UP, options.calls):
        if calls == 0:
            continue
        if options.run == "apply":
            process.apply(calls, heavy=False, direct=False, level=options.level)
        else:
            process.publish("memory://", f"bench-{options.variant}", calls, purge=True)


#: Calls made before the counted ones: imports, caches and first-call paths warmed up.
WARM_UP = 200


if __name__ == "__main__":
    main()
