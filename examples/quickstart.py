"""celery_kit quick start: a real prefork worker and a producer, no server needed.

Run it with ``make demo`` (or ``python examples/quickstart.py``). It uses Celery's
``filesystem://`` broker and ``file://`` result backend in a temporary folder, starts a
worker in a subprocess, and shows:

1. a valid task succeeding, its result model read back typed;
2. an invalid payload refused in the caller -- nothing is published;
3. a bad message sent around the kit refused by the worker, never retried;
4. a transient failure retried (tenacity backoff), then succeeding;
5. a soft time limit firing and the cleanup hook running once.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celery import Celery
from pydantic import BaseModel, EmailStr, ValidationError

from celery_kit import PayloadValidationError, RetryPolicy, validated_task

DATA = Path(os.environ.get("QUICKSTART_DIR") or tempfile.mkdtemp(prefix="celery-kit-demo-"))
for sub in ("queue", "processed", "results", "state", "control"):
    (DATA / sub).mkdir(parents=True, exist_ok=True)

app = Celery("quickstart", broker="filesystem://", backend=f"file://{DATA / 'results'}")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(DATA / "queue"),
        "data_folder_out": str(DATA / "queue"),
        "processed_folder": str(DATA / "processed"),
        "control_folder": str(DATA / "control"),
        "polling_interval": 0.1,
    },
    worker_enable_remote_control=False,  # the filesystem broker has no broadcast
    task_soft_time_limit=10,
    task_time_limit=20,
    broker_connection_retry_on_startup=True,
)


class EmailPayload(BaseModel):
    to: EmailStr
    subject: str
    body: str = ""


class EmailSent(BaseModel):
    message_id: str


@validated_task(app, name="demo.send_email")
def send_email(payload: EmailPayload) -> EmailSent:
    return EmailSent(message_id=f"<{uuid.uuid4().hex[:12]}@{payload.to.split('@')[1]}>")


@validated_task(
    app,
    name="demo.flaky_smtp",
    retry=RetryPolicy(retry_on=(ConnectionError,), max_retries=5, backoff=0.2, max_backoff=1),
)
def flaky_smtp(to: EmailStr, failures: int) -> int:
    counter = DATA / "state" / f"attempts-{to}"
    attempts = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(attempts))
    if attempts <= failures:
        raise ConnectionError(f"SMTP server busy (attempt {attempts})")
    return attempts


@validated_task(app, name="demo.render_report", soft_time_limit=1, time_limit=5)
def render_report(report_id: int) -> str:
    time.sleep(3)  # longer than the soft limit
    return "rendered"


@render_report.on_soft_timeout
def remove_partial_file(payload: dict[str, int]) -> None:
    (DATA / "state" / f"cleaned-{payload['report_id']}").write_text("cleaned\n")


def main() -> int:
    from celery_kit.testing import WorkerProcess

    here = Path(__file__).resolve().parent
    worker = WorkerProcess(
        "quickstart",
        cwd=here,
        env={"QUICKSTART_DIR": str(DATA), "PYTHONPATH": str(here)},
        concurrency=2,
    )
    print(f"demo data in {DATA}; starting a prefork worker ...")
    worker.start(timeout=30)
    try:
        result = send_email.delay(to="ada@example.com", subject="Hello Ada")
        sent = send_email.get_result(result, timeout=15, interval=0.1)
        print(f"1. valid task       -> {sent!r}")

        try:
            send_email.delay(to="not-an-email", subject="Hi")
        except ValidationError as exc:
            print(
                f"2. invalid payload  -> refused in the caller, nothing published ({exc.error_count()} error)"
            )

        raw = app.send_task("demo.send_email", args=[{"to": "nobody", "subject": 42}])
        try:
            raw.get(timeout=15, interval=0.1)
        except PayloadValidationError as exc:
            fields = sorted(".".join(map(str, e["loc"])) for e in exc.errors)
            print(f"3. bad raw message  -> worker refused it, not retried; fields: {fields}")

        attempts = flaky_smtp.delay(to="bob@example.com", failures=2).get(timeout=20, interval=0.1)
        print(f"4. transient error  -> retried, succeeded on attempt {attempts}")

        timed_out = render_report.delay(report_id=7)
        try:
            timed_out.get(timeout=15, interval=0.1)
        except Exception as exc:
            cleaned = (DATA / "state" / "cleaned-7").exists()
            print(f"5. soft time limit  -> {type(exc).__name__}; cleanup ran: {cleaned}")
            if not cleaned:
                return 1
    finally:
        worker.stop()
        if "QUICKSTART_DIR" not in os.environ:
            shutil.rmtree(DATA, ignore_errors=True)
    print("demo finished")
    return 0


if __name__ == "__main__":
    sys.exit(main())
