"""CPU per task of a prefork pool process's own path, in one process, without the noise.

End to end (``make bench``) the pool processes' CPU per task moves by tens of percent from
run to run on a shared machine, more than the differences worth chasing. This runs just
what a pool process runs per task -- Celery's ``fast_trace_task`` on a real message
(JSON body, the headers a worker hands its pool), the task's signals, the kit's observers
and their log lines and metrics -- in a loop, in a process set up as a worker sets up its
pool: the worker signals the kit listens to are sent as Celery sends them (``celeryd_init``,
``setup_logging``, ``worker_init`` for a prefork worker, ``worker_process_init``), so the
kit takes logging over and counts in multiprocess mode, and a variant that does not log
through the kit logs through Celery's own handler, as ``celery worker -l INFO`` does.
Lines go to a file, as a worker's do.

What it leaves out: the pipe to the main process, the broker, and everything a busy
machine adds (a pool process that waits for its next task starts it with cold caches;
end to end the same work costs about twice what this loop shows). Use it to compare
variants and changes, not to predict a worker's CPU.

    python -m benchmarks.pool_path plain kit kit_full kit+logging kit+metrics
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOSTNAME = "bench@pool-path"
QUEUE = "bench-pool-path"


class _Worker:
    """What the kit's worker receivers read of Celery's ``WorkController``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.hostname = HOSTNAME
        self.pool_cls = "prefork"


def measure(variant: str, tasks: int, rounds: int, log_path: str) -> list[float]:
    """µs of CPU per task, per round, for ``variant`` (in this process: run it alone)."""
    from celery import signals
    from celery.app.trace import build_tracer, fast_trace_task, setup_worker_optimizations
    from kombu.serialization import dumps

    from benchmarks.bench_app import ProcessLogging, build, call

    app = build(variant, "memory://", QUEUE, None, "")
    kit_logs = variant in ("kit_full", "kit+logging")
    worker = _Worker(app)
    instrumented = variant == "kit_full" or variant.startswith("kit+")
    if instrumented:
        options = {"loglevel": "INFO", "logfile": log_path}
        signals.celeryd_init.send(sender=HOSTNAME, instance=worker, conf=app.conf, options=options)
        signals.setup_logging.send(sender=None, loglevel="INFO", logfile=log_path, format="", colorize=False)
        signals.worker_init.send(sender=worker)
    log = None
    if not kit_logs:
        log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 -- closed at the end
        ProcessLogging(log).use(variant)  # Celery's own handler, as `celery worker -l INFO`
    setup_worker_optimizations(app, HOSTNAME)
    signals.worker_process_init.send(sender=None)
    name, args, kwargs = call(variant, heavy=False)
    task = app.tasks[name]
    task.__trace__ = build_tracer(name, task, app.loader, HOSTNAME, app=app)

    def message() -> tuple[dict[str, Any], Any, str, str]:
        task_id = str(uuid.uuid4())
        built = app.amqp.as_task_v2(task_id, name, args=args, kwargs=kwargs)
        headers = dict(built.headers)
        headers.update(
            delivery_info={"exchange": "", "routing_key": QUEUE, "priority": 0, "redelivered": False},
            reply_to=None,
            correlation_id=task_id,
        )
        # What the producer's publish receivers add (the kit's publish time and context).
        signals.before_task_publish.send(
            sender=name,
            body=built.body,
            exchange="",
            routing_key=QUEUE,
            headers=headers,
            properties=built.properties,
            declare=[],
            retry_policy=None,
        )
        content_type, encoding, body = dumps(built.body, serializer="json")  # type: ignore[no-untyped-call]
        return headers, body, content_type, encoding

    for headers, body, content_type, encoding in [message() for _ in range(200)]:  # warm up
        fast_trace_task(name, headers["id"], headers, body, content_type, encoding, hostname=HOSTNAME)
    per_round = []
    for _ in range(rounds):
        messages = [message() for _ in range(tasks)]
        started = time.process_time()
        for headers, body, content_type, encoding in messages:
            fast_trace_task(name, headers["id"], headers, body, content_type, encoding, hostname=HOSTNAME)
        per_round.append((time.process_time() - started) / tasks * 1e6)
    if instrumented:  # the kit removes its multiprocess metrics directory
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        signals.worker_shutdown.send(sender=worker)
    if log is not None:
        log.close()
    # Measured with the logging its worker has, or not at all: the kit's JSON line, or
    # Celery's own (a variant whose line went nowhere would look cheaper than it is).
    line = '"task succeeded"' if kit_logs else "succeeded in"
    if line not in Path(log_path).read_text(encoding="utf-8"):
        raise RuntimeError(f"{variant} wrote no {line} line to {log_path}")
    return per_round


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", help="plain, kit, kit_full, kit+<part> ...")
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run
    options = parser.parse_args()
    if options.one:
        (variant,) = options.variants
        with tempfile.TemporaryDirectory() as scratch:
            samples = measure(variant, options.tasks, options.rounds, os.path.join(scratch, "worker.log"))
        print(" ".join(f"{s:.2f}" for s in samples))
        return 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
    }
    print("| variant | pool path, CPU µs/task (median) | rounds (min-max) |")
    print("|---|---|---|")
    for variant in options.variants:
        # Each variant in its own interpreter: the kit's receivers and logging stay there.
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.pool_path",
                variant,
                "--one",
                "--tasks",
                str(options.tasks),
                "--rounds",
                str(options.rounds),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode != 0:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        samples = [float(s) for s in run.stdout.split()[-options.rounds :]]
        print(f"| {variant} | {statistics.median(samples):.1f} | {min(samples):.1f}-{max(samples):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
