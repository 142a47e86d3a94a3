"""The email worker end to end: a real prefork worker, real Redis, a real SMTP server.

Nothing is mocked: tasks are published to Redis, run by ``celery worker`` in a
subprocess, and talk SMTP to :class:`~smtp_receiver.SmtpReceiver` over TCP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from celery.schedules import crontab
from celery_kit import ConfigurationError, PayloadValidationError, PermanentError
from celery_kit.testing import AlertReceiver, publish_raw_message, read_metric
from pydantic import ValidationError

import celeryconfig
from app.celery_app import app
from app.config import get_settings
from app.processors.delivery_log import DeliveryLog
from app.processors.report_processor import CleanupResult, DailyReport
from app.tasks.email import EmailSent, send_email
from app.tasks.reports import cleanup_old_data, generate_daily_report
from harness import EXAMPLE_DIR, Service, wait_until
from smtp_receiver import SmtpReceiver

RunPython = Callable[..., subprocess.CompletedProcess[str]]
SEND_EMAIL = "app.tasks.email.send_email"


def address(name: str) -> str:
    """A recipient no other test (or run) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


def delivery_log() -> DeliveryLog:
    settings = get_settings().worker
    return DeliveryLog.from_url(settings.state_url.get_secret_value(), settings.key_prefix)


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


# -- configuration: preset, routing, limits, beat schedule ------------------------------------


def test_queues_routes_and_limits_come_from_the_preset() -> None:
    conf = app.conf
    assert conf.celery_kit_preset == "production"
    assert conf.task_serializer == "json"
    assert conf.accept_content == ["json"]
    assert {queue.name for queue in conf.task_queues} == {"celery", "email", "reports"}
    assert conf.task_routes == {
        "app.tasks.email.*": {"queue": "email"},
        "app.tasks.reports.*": {"queue": "reports"},
    }
    for task_name, queue in [
        (SEND_EMAIL, "email"),
        ("app.tasks.reports.generate_daily_report", "reports"),
        ("app.tasks.reports.cleanup_old_data", "reports"),
    ]:
        assert app.amqp.router.route({}, task_name)["queue"].name == queue
    assert conf.task_annotations == {"*": {"rate_limit": "100/m"}}
    # The email task's limits and retries come from EMAIL_WORKER_* (see conftest).
    assert (send_email.soft_time_limit, send_email.time_limit) == (3.0, 10.0)
    assert send_email.retry_policy is not None
    assert send_email.retry_policy.max_retries == 6
    assert ConnectionError in send_email.retry_policy.exceptions
    assert (generate_daily_report.soft_time_limit, generate_daily_report.time_limit) == (120, 150)


def test_beat_schedule_is_validated_and_names_registered_tasks() -> None:
    schedule = celeryconfig.beat_schedule
    assert app.conf.beat_schedule == schedule
    assert set(schedule) == {"daily-report", "cleanup-old-data"}
    daily, cleanup = schedule["daily-report"], schedule["cleanup-old-data"]
    assert daily["schedule"] == crontab(hour=9, minute=0)
    assert cleanup["schedule"] == crontab(hour=2, minute=0, day_of_week=0)
    # The payloads are JSON, read from EMAIL_WORKER_* and validated when the schedule was built.
    assert daily["args"] == ({"day": None, "recipients": ["ops@example.com"]},)
    assert cleanup["args"] == ({"older_than_days": 30},)
    for entry in schedule.values():
        # The entry names a task of this app, and its payload fits that task's signature.
        task = app.tasks[entry["task"]]
        assert task.payload_schema is not None
        task.payload_schema.validate(entry["args"], entry["kwargs"])


def test_bad_beat_schedule_payload_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="recipients") as bad_address:
        celeryconfig.build_beat_schedule(["ops@"], 30)
    assert isinstance(bad_address.value.__cause__, ValidationError)
    with pytest.raises(ConfigurationError, match="older_than_days"):
        celeryconfig.build_beat_schedule([], 0)


def test_bad_schedule_setting_stops_the_service_at_import(run_python: RunPython) -> None:
    command = ("-c", "import app.celery_app")
    good = run_python(*command)
    assert good.returncode == 0, good.stderr
    bad = run_python(*command, env={"EMAIL_WORKER_CLEANUP_AFTER_DAYS": "0"})
    assert bad.returncode != 0
    assert "ConfigurationError" in bad.stderr
    assert "cleanup_old_data" in bad.stderr
    assert "older_than_days" in bad.stderr


# -- the email task ---------------------------------------------------------------------------


def test_valid_email_is_delivered_to_the_smtp_server(service: Service, smtp: SmtpReceiver) -> None:
    to = address("ada")
    result = send_email.delay(to=to, subject="Welcome, Ada", body="Bonjour Ada, ça va ?\n")
    sent = send_email.get_result(result, timeout=20)

    assert isinstance(sent, EmailSent)
    assert sent.to == to
    assert sent.attempts == 1
    assert sent.message_id == f"<{result.id}@example.com>"
    [received] = smtp.to(to)
    message = received.message
    assert received.mail_from == "noreply@example.com"
    assert message["To"] == to
    assert message["Subject"] == "Welcome, Ada"
    assert message["Message-ID"] == sent.message_id
    assert message.get_content() == "Bonjour Ada, ça va ?\n"
    # Counted in the delivery log the daily report reads.
    assert delivery_log().counts(sent.accepted_at.date()).get("example.com", 0) >= 1


def test_invalid_payload_is_refused_in_the_caller_and_nothing_is_published(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    queue = f"nobody-consumes-{uuid.uuid4().hex[:8]}"  # what is published there stays there
    queue_key = f"{key_prefix}:{queue}"
    try:
        with pytest.raises(ValidationError) as refused:
            send_email.apply_async(kwargs={"to": "not-an-email", "subject": "Hi", "body": ""}, queue=queue)
        assert [error["loc"] for error in refused.value.errors()] == [("to",)]
        with pytest.raises(ValidationError):
            send_email.apply_async(
                kwargs={"to": address("x"), "subject": "", "body": "", "cc": "x@example.com"}, queue=queue
            )
        assert redis_client.llen(queue_key) == 0

        # The same call with a valid payload does publish: the check above can see a message.
        send_email.apply_async(kwargs={"to": address("x"), "subject": "Hi", "body": ""}, queue=queue)
        assert redis_client.llen(queue_key) == 1
    finally:
        redis_client.delete(queue_key)


def test_worker_refuses_a_raw_message_that_does_not_fit(service: Service, smtp: SmtpReceiver) -> None:
    connections = smtp.connections
    result = publish_raw_message(app, SEND_EMAIL, args=[{"to": "nobody", "subject": 42}])
    with pytest.raises(PayloadValidationError) as refused:
        result.get(timeout=20)
    assert sorted(".".join(map(str, error["loc"])) for error in refused.value.errors) == [
        "body",
        "subject",
        "to",
    ]
    assert result.state == "FAILURE"
    assert smtp.connections == connections  # never reached the SMTP server


@pytest.mark.parametrize("failure", ["greylisted-rcpt-451", "greeting-421"])
def test_transient_smtp_failures_are_retried_until_delivered(
    service: Service, smtp: SmtpReceiver, failure: str
) -> None:
    to = address("retry")
    if failure == "greylisted-rcpt-451":
        smtp.defer(to, times=2)
    else:
        smtp.refuse_next_connections(2)
    retried_before = read_metric(
        "celery_task_finished_total", {"task": SEND_EMAIL, "outcome": "retried"}, port=service.metrics_port
    )

    result = send_email.delay(to=to, subject="Third time lucky", body="...")
    sent = send_email.get_result(result, timeout=30)

    assert sent.attempts == 3
    assert len(smtp.to(to)) == 1
    if failure == "greylisted-rcpt-451":
        assert smtp.rcpt_attempts[to] == 3
    else:
        assert smtp.rcpt_attempts[to] == 1  # the first two attempts never got past the greeting
    retried = read_metric(
        "celery_task_finished_total", {"task": SEND_EMAIL, "outcome": "retried"}, port=service.metrics_port
    )
    assert retried - retried_before == 2


def test_permanent_smtp_refusal_fails_at_once_and_alerts(
    service: Service, smtp: SmtpReceiver, alerts: AlertReceiver
) -> None:
    to = address("gone")
    smtp.reject(to)
    result = send_email.delay(to=to, subject="Hello?", body="...")
    with pytest.raises(PermanentError, match=r"refused the email for good \(recipient refused, SMTP 550\)"):
        result.get(timeout=20)

    found = alerts.wait_for(lambda received: any(a.task_id == result.id for a in received), timeout=20)
    [alert] = [a for a in found if a.task_id == result.id]
    assert alert.task_name == SEND_EMAIL
    assert alert.exception_type == "PermanentError"
    assert to not in (alert.exception_message or "")  # no address in alerts
    time.sleep(1.0)  # longer than the retry backoff: a retry would have come by now
    assert smtp.rcpt_attempts[to] == 1
    assert smtp.to(to) == []


def test_soft_time_limit_parks_the_unconfirmed_email(service: Service, smtp: SmtpReceiver) -> None:
    to = address("stuck")
    smtp.stall(to)  # takes the message, never confirms it
    started = time.monotonic()
    result = send_email.delay(to=to, subject="Into the void", body="...")
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=20)
    assert time.monotonic() - started < 10.0  # the soft limit (3 s) fired, not the hard one (10 s)

    parked = [record for record in delivery_log().parked() if record["task_id"] == result.id]
    assert len(parked) == 1
    assert parked[0]["to"] == to
    assert parked[0]["message_id"] == f"<{result.id}@example.com>"
    time.sleep(1.0)
    assert smtp.rcpt_attempts[to] == 1  # delivery state unknown: parked, not retried blindly


# -- periodic tasks -----------------------------------------------------------------------------


def test_daily_report_counts_the_days_deliveries_writes_and_emails_it(
    service: Service, smtp: SmtpReceiver
) -> None:
    day = date(2001, 2, 3)
    log = delivery_log()
    for recipient in ["a@gmail.com", "b@gmail.com", "c@example.org"]:
        log.record(recipient, day)
    ops = address("ops")

    result = generate_daily_report.delay(day=day, recipients=[ops])
    report = generate_daily_report.get_result(result, timeout=20)

    assert isinstance(report, DailyReport)
    assert (report.day, report.total, report.by_domain) == (day, 3, {"example.org": 1, "gmail.com": 2})
    assert report.emailed_to == [ops]
    written = json.loads(Path(report.path).read_text())
    assert Path(report.path) == service.reports_dir / "daily-2001-02-03.json"
    assert written["total"] == 3
    assert written["by_domain"] == {"example.org": 1, "gmail.com": 2}
    # Sent through send_email, i.e. routed to the email queue by the worker itself.
    smtp.wait_for(lambda server: server.to(ops), timeout=20)
    [received] = smtp.to(ops)
    assert received.message["Subject"] == "Email deliveries on 2001-02-03: 3"
    assert "gmail.com: 2" in received.message.get_content()


def test_weekly_cleanup_removes_only_old_reports_and_counters(service: Service) -> None:
    today = utc_today()
    old_day, recent_day = today - timedelta(days=40), today - timedelta(days=5)
    reports = service.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    for day in (old_day, recent_day):
        (reports / f"daily-{day.isoformat()}.json").write_text("{}\n")
    unrelated = reports / "notes.txt"
    unrelated.write_text("keep me\n")
    log = delivery_log()
    log.record("a@example.com", old_day)
    log.record("a@example.com", recent_day)
    cutoff = today - timedelta(days=30)
    old_reports = [p for p in reports.glob("daily-*.json") if date.fromisoformat(p.stem[6:]) < cutoff]
    old_days = [d for d in log.days() if d < cutoff]

    result = cleanup_old_data.delay(older_than_days=30)
    done = cleanup_old_data.get_result(result, timeout=20)

    assert isinstance(done, CleanupResult)
    assert done.cutoff == cutoff
    assert done.reports_removed == len(old_reports) >= 1
    assert done.delivery_days_removed == len(old_days) >= 1
    assert not (reports / f"daily-{old_day.isoformat()}.json").exists()
    assert (reports / f"daily-{recent_day.isoformat()}.json").exists()
    assert unrelated.exists()
    assert old_day not in log.days()
    assert recent_day in log.days()


# -- operations: metrics, health probes, beat ---------------------------------------------------


def test_worker_serves_metrics_and_passes_its_health_probes(
    service: Service, smtp: SmtpReceiver, run_python: RunPython
) -> None:
    sent = send_email.get_result(send_email.delay(to=address("m"), subject="m", body="m"), timeout=20)
    assert sent.attempts == 1
    succeeded = read_metric(
        "celery_task_finished_total", {"task": SEND_EMAIL, "outcome": "succeeded"}, port=service.metrics_port
    )
    assert succeeded >= 1
    # The probes of the Dockerfile / Kubernetes spec, as written there (file from the env).
    for probe in ("startup", "ready", "live"):
        done = run_python("-m", "celery_kit.health", "worker", probe)
        assert done.returncode == 0, done.stdout + done.stderr
        verdict = json.loads(done.stdout.splitlines()[-1])
        assert verdict["ok"] is True
        assert verdict["file"] == str(service.health_file)


def test_beat_starts_and_passes_its_health_probe(
    redis_client: redis.Redis, tmp_path: Path, run_python: RunPython
) -> None:
    """A real ``celery beat`` of the service, on the run's broker, probed as in the Dockerfile."""
    beat_file = tmp_path / "beat-health.json"
    env = {"CELERY_KIT_HEALTH_BEAT_FILE": str(beat_file)}
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "app.celery_app", "beat", "-l", "INFO"),
                *("-s", str(tmp_path / "celerybeat-schedule"), "--pidfile="),
            ],
            cwd=EXAMPLE_DIR,
            env={**os.environ, "PYTHONPATH": str(EXAMPLE_DIR), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(beat_file.exists, timeout=30, what="beat's health file")
        for probe in ("startup", "live"):
            done = run_python("-m", "celery_kit.health", "beat", probe, env=env)
            assert done.returncode == 0, done.stdout + done.stderr + (tmp_path / "beat.log").read_text()
    finally:
        beat.terminate()
        beat.wait(20)
