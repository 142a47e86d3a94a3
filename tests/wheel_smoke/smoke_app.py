"""A user's app, run from a clean virtualenv that holds only the built wheel and one extra.

``python smoke_app.py`` starts a real prefork worker on this module (``celery -A smoke_app
worker``, through :class:`celery_kit.testing.WorkerProcess`), sends a validated task, reads
its result and the worker's metrics, and stops the worker. It imports nothing from the
checkout: what it needs must come from the wheel's declared dependencies, which is the
point (a missing dependency of a broker transport shows up here, not in a user's worker).
Settings come from ``SMOKE_*`` environment variables, set by ``run.py``.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid

from celery import Celery
from pydantic import BaseModel, ValidationError

import celery_kit
from celery_kit import instrument, validated_task
from celery_kit.testing import WorkerProcess, read_metric

QUEUE = os.environ.get("SMOKE_QUEUE", "kit-smoke")
PORT = int(os.environ.get("SMOKE_METRICS_PORT", "0"))

app = Celery("smoke", broker=os.environ.get("SMOKE_BROKER_URL"), backend=os.environ.get("SMOKE_BACKEND_URL"))
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    result_expires=300,
)
instrument(app, metrics_port=PORT)


class Order(BaseModel):
    order_id: int
    total: float


class Receipt(BaseModel):
    order_id: int
    charged: float


@validated_task(app, name="smoke.charge", soft_time_limit=20, time_limit=30)
def charge(order: Order) -> Receipt:
    return Receipt(order_id=order.order_id, charged=order.total)


def _fail(message: str, worker: WorkerProcess | None = None) -> None:
    log = worker.log()[-6000:] if worker is not None else ""
    sys.exit(f"wheel smoke FAILED on {app.conf.broker_url}: {message}\n--- worker log ---\n{log}")


def main() -> None:
    if not celery_kit.__file__ or not celery_kit.__file__.startswith(sys.prefix):
        _fail(f"celery_kit imported from {celery_kit.__file__}, not from this venv ({sys.prefix})")
    try:
        charge.delay(order_id="not a number", total=1)
    except ValidationError:
        pass
    else:
        _fail("an invalid payload was published")
    worker = WorkerProcess(
        "smoke_app",
        queues=[QUEUE],
        pool="prefork",
        concurrency=1,
        hostname=f"kit-smoke-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    try:
        try:
            worker.start(timeout=60)
        except Exception as exc:  # WorkerStartError carries the worker's log
            _fail(f"the worker did not start: {exc}")
        result = charge.delay(order_id=7, total=12.5)
        deadline = time.monotonic() + 60
        while not result.ready():
            if worker.process is not None and worker.process.poll() is not None:
                _fail(f"the worker exited with code {worker.process.returncode}", worker)
            if time.monotonic() > deadline:
                _fail("no result within 60 s", worker)
            time.sleep(0.1)
        value = result.get(timeout=5)
        if value != {"order_id": 7, "charged": 12.5}:
            _fail(f"unexpected result {value!r}", worker)
        refused = app.send_task("smoke.charge", kwargs={"order": {"order_id": "x"}}, queue=QUEUE)
        refused.get(timeout=60, propagate=False)
        if refused.state != "FAILURE" or type(refused.result).__name__ != "PayloadValidationError":
            _fail(f"an invalid raw message ended as {refused.state} {refused.result!r}", worker)
        labels = {"task": "smoke.charge", "queue": QUEUE}
        succeeded = read_metric("celery_task_finished_total", {**labels, "outcome": "succeeded"}, port=PORT)
        failed = read_metric("celery_task_finished_total", {**labels, "outcome": "failed"}, port=PORT)
        if (succeeded, failed) != (1, 1):
            _fail(f"metrics: succeeded={succeeded} failed={failed}, expected 1 and 1", worker)
    finally:
        code = worker.stop()
        worker.remove_log()
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(QUEUE)
    if code != 0:
        _fail(f"the worker exited with code {code} on SIGTERM")
    print(f"wheel smoke ok: {app.conf.broker_url.split('://')[0]} worker ran a validated task")


if __name__ == "__main__":
    main()
