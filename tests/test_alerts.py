"""celery_kit.alerts: throttling, digests, delivery, sinks and what triggers an alert."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from datetime import datetime, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from pydantic import SecretStr

from celery_kit import PermanentError, RetryPolicy, dispatcher_for, validated_task
from celery_kit.alerts import (
    Alert,
    AlertDelivery,
    Alerting,
    AlertKind,
    AlertObserver,
    CallbackSink,
    LocalRateLimit,
    LocalThrottle,
    RedisRateLimit,
    RedisThrottle,
    SmtpSink,
    WebhookSink,
    redact,
)

from ._support import free_port


def make_alert(
    task: str = "t.x", kind: AlertKind = AlertKind.FINAL_FAILURE, exc: str = "ValueError"
) -> Alert:
    now = datetime.now(timezone.utc)
    return Alert(kind=kind, task_name=task, exception_type=exc, first_seen=now, last_seen=now, task_id="id")


def test_local_throttle_sends_the_first_and_digests_the_rest() -> None:
    throttle = LocalThrottle(window=0.2)
    assert throttle.admit(make_alert())
    assert not any(throttle.admit(make_alert()) for _ in range(5))
    assert throttle.admit(make_alert(exc="KeyError"))  # another fingerprint, its own window
    assert throttle.due_digests() == []
    time.sleep(0.25)
    (digest,) = throttle.due_digests()
    assert (digest.digest, digest.occurrences, digest.exception_type) == (True, 5, "ValueError")
    assert digest.task_id is None
    assert "5 more in the last" in digest.summary
    assert throttle.due_digests() == []


def test_local_throttle_backs_off_during_a_storm_and_resets_after() -> None:
    throttle = LocalThrottle(window=0.1, max_backoff=4)
    for expected_length in (0.1, 0.2, 0.4, 0.4):  # doubles per digest, capped at 4x
        assert throttle.admit(make_alert())
        assert not throttle.admit(make_alert())
        time.sleep(expected_length + 0.05)
        (digest,) = throttle.due_digests()
        assert digest.window_seconds == pytest.approx(expected_length)
    assert throttle.admit(make_alert())  # quiet window: the storm is over
    time.sleep(0.45)
    assert throttle.due_digests() == []
    assert throttle.admit(make_alert())
    assert not throttle.admit(make_alert())
    (digest,) = throttle.due_digests(force=True)
    assert digest.window_seconds == pytest.approx(0.1)


def test_redis_throttle_is_shared_and_the_digest_is_taken_once(
    redis_client: redis.Redis, unique: str
) -> None:
    a = RedisThrottle(redis_client, window=0.3, prefix=f"t-{unique}")
    b = RedisThrottle(redis_client, window=0.3, prefix=f"t-{unique}")  # another process or host
    assert a.admit(make_alert())
    assert not b.admit(make_alert())
    assert not a.admit(make_alert())
    assert a.due_digests() == []
    time.sleep(0.35)
    digests = b.due_digests() + a.due_digests()
    assert [(d.occurrences, d.digest) for d in digests] == [(2, True)]
    assert a.admit(make_alert())  # a new window
    for key in redis_client.scan_iter(f"t-{unique}:*"):
        redis_client.delete(key)


def test_redis_throttle_counts_a_late_occurrence_into_the_ended_windows_digest(
    redis_client: redis.Redis, unique: str
) -> None:
    # Each pool process flushes digests once a second: an occurrence can arrive after a
    # window ended and before any process took its digest. It must not open a new window
    # (that would hold the old digest back a whole window, merge it into the next one's
    # and skip the backoff): it joins the pending digest, which goes out on its own.
    a = RedisThrottle(redis_client, window=0.3, prefix=f"t-{unique}")
    b = RedisThrottle(redis_client, window=0.3, prefix=f"t-{unique}")
    try:
        assert a.admit(make_alert())
        assert not a.admit(make_alert())
        assert not b.admit(make_alert())
        time.sleep(0.4)  # the window ended; nobody has taken its digest yet
        assert not b.admit(make_alert())
        (digest,) = a.due_digests()
        assert (digest.occurrences, digest.window_seconds, digest.digest) == (3, 0.3, True)
        assert b.due_digests() == []
        # The storm goes on: the next window opens with the first occurrence after the
        # digest, twice as long.
        assert b.admit(make_alert())
        time.sleep(0.4)
        assert not a.admit(make_alert())  # still inside the 0.6 s window
        assert a.due_digests() == []
        time.sleep(0.3)
        (second,) = b.due_digests()
        assert (second.occurrences, second.window_seconds) == (1, 0.6)
    finally:
        for key in redis_client.scan_iter(f"t-{unique}:*"):
            redis_client.delete(key)


def _shared_delivery(
    redis_url: str, prefix: str, per_minute: float, results: list[tuple[str, str]]
) -> AlertDelivery:
    """One process's delivery (its own Redis client and per-process throttle), with the
    rate limit shared through Redis."""
    return AlertDelivery(
        [CallbackSink(lambda alert: None, name="pager"), CallbackSink(lambda alert: None, name="audit")],
        LocalThrottle(window=60),
        rate_limit=RedisRateLimit(redis.Redis.from_url(redis_url), per_minute, prefix=prefix),
        on_result=lambda sink, result: results.append((sink, result)),
    )


def test_the_rate_limit_per_sink_is_shared_through_redis(
    redis_url: str, redis_client: redis.Redis, unique: str
) -> None:
    results: list[tuple[str, str]] = []
    prefix = f"t-{unique}"
    a = _shared_delivery(redis_url, prefix, 5, results)
    b = _shared_delivery(redis_url, prefix, 5, results)  # another pool process or host
    try:
        for n in range(6):  # distinct incidents: the throttle lets every one through
            a.submit(make_alert(exc=f"A{n}"))
            b.submit(make_alert(exc=f"B{n}"))
        a.close()
        b.close()
        for sink in ("pager", "audit"):  # each sink has its own limit, shared by a and b
            assert results.count((sink, "sent")) == 5
            assert results.count((sink, "suppressed")) == 7
        assert len(results) == 24
        assert redis_client.exists(f"{prefix}:rate:pager:tokens")
    finally:
        for key in redis_client.scan_iter(f"{prefix}:*"):
            redis_client.delete(key)


def test_the_shared_rate_limit_falls_back_to_the_process_when_redis_is_down() -> None:
    down = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    limit = RedisRateLimit(down, 2, retry_after=0.2)
    assert [limit.take("pager") for _ in range(3)] == [True, True, False]
    assert limit.take("audit")  # per sink, as with Redis
    started = time.monotonic()
    assert not limit.take("pager")  # no new connection attempt per alert meanwhile
    assert time.monotonic() - started < 0.05
    time.sleep(0.25)
    assert not limit.take("pager")  # tried Redis again (still down), still limited


def test_alerting_shares_the_rate_limit_only_with_a_redis_url(redis_url: str) -> None:
    assert type(Alerting(redis_url=redis_url).rate_limit()) is RedisRateLimit
    local = Alerting(rate_limit_per_minute=1).rate_limit()
    assert type(local) is LocalRateLimit
    assert [local.take("log"), local.take("log")] == [True, False]


def test_delivery_throttles_rate_limits_and_counts_results() -> None:
    sent: list[Alert] = []
    results: list[tuple[str, str]] = []

    def broken(alert: Alert) -> None:
        raise ConnectionError("sink down")

    delivery = AlertDelivery(
        [CallbackSink(sent.append, name="ok"), CallbackSink(broken, name="broken")],
        LocalThrottle(window=60),
        rate_limit_per_minute=2,
        on_result=lambda sink, result: results.append((sink, result)),
    )
    for exc in ("A", "B", "C"):
        delivery.submit(make_alert(exc=exc))
    delivery.submit(make_alert(exc="A"))  # throttled into A's digest
    delivery.close()
    assert [a.exception_type for a in sent if not a.digest] == ["A", "B"]  # C hit the rate limit
    assert ("ok", "sent") in results
    assert ("broken", "failed") in results
    assert results.count(("ok", "suppressed")) >= 2  # C (rate limit) and A's repeat (throttle)
    # Closing flushed the per-process digest of A -- also rate limited by now.
    assert results[-2:] == [("ok", "suppressed"), ("broken", "suppressed")]


def test_a_full_queue_drops_without_blocking() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow(alert: Alert) -> None:
        started.set()
        release.wait(5)

    results: list[tuple[str, str]] = []
    delivery = AlertDelivery(
        [CallbackSink(slow)],
        LocalThrottle(window=60),
        queue_size=1,
        on_result=lambda sink, result: results.append((sink, result)),
    )
    delivery.submit(make_alert(exc="A"))
    assert started.wait(5)
    delivery.submit(make_alert(exc="B"))
    delivery.submit(make_alert(exc="C"))  # queue full: dropped at once
    assert ("queue", "failed") in results
    release.set()
    delivery.close()


def test_only_final_failures_alert_with_their_kind(app: Celery) -> None:
    sent: list[Alert] = []
    delivery = AlertDelivery([CallbackSink(sent.append)], LocalThrottle(window=60))
    dispatcher_for(app).subscribe(AlertObserver(delivery, link_template="https://flower/task/{task_id}"))

    @validated_task(
        app, shared=False, name="a.flaky", retry=RetryPolicy(retry_on=ConnectionError, max_retries=1)
    )
    def flaky() -> None:
        raise ConnectionError("down")

    @validated_task(app, shared=False, name="a.gone")
    def gone() -> None:
        raise PermanentError("gone")

    @validated_task(app, shared=False, name="a.typed")
    def typed(n: int) -> None: ...

    flaky.apply(task_id="f-1")  # one retry (no alert), then final
    gone.apply(task_id="g-1")
    from celery.app.trace import build_tracer

    build_tracer(typed.name, typed, eager=True, app=app)("v-1", ["x"], {}, {"id": "v-1"})
    delivery.close()
    assert [(a.task_name, a.kind, a.task_id) for a in sent] == [
        ("a.flaky", AlertKind.FINAL_FAILURE, "f-1"),
        ("a.gone", AlertKind.FINAL_FAILURE, "g-1"),
        ("a.typed", AlertKind.INVALID_PAYLOAD, "v-1"),
    ]
    assert sent[0].link == "https://flower/task/f-1"
    assert sent[0].retries == 1
    assert sent[0].payload is None


def test_redact_masks_password_like_fields_recursively() -> None:
    data = {"user": "a", "Password": "x", "nested": [{"api_key": "k", "ok": 1}], "token_hint": "t"}
    assert redact(data) == {
        "user": "a",
        "Password": "**********",
        "nested": [{"api_key": "**********", "ok": 1}],
        "token_hint": "**********",
    }


def test_webhook_bodies_and_secret_url() -> None:
    sink = WebhookSink("https://hooks.example/T0KEN", slack=True)
    alert = make_alert()
    alert.link = "https://flower/task/id"
    assert json.loads(sink.body(alert)) == {"text": f"{alert.summary}\nhttps://flower/task/id"}
    assert "T0KEN" not in repr(sink)
    plain = WebhookSink("https://hooks.example/x")
    assert json.loads(plain.body(alert))["kind"] == "final_failure"


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to receive one message (a real socket conversation)."""

    received: list[str] = []  # noqa: RUF012

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        data: list[str] = []
        in_data = False
        while line := self.rfile.readline().decode():
            if in_data:
                if line == ".\r\n":
                    in_data = False
                    self.received.append("".join(data))
                    self.wfile.write(b"250 queued\r\n")
                else:
                    data.append(line)
                continue
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                self.wfile.write(b"250 test\r\n")
            elif verb == "DATA":
                in_data = True
                self.wfile.write(b"354 go\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_smtp_sink_sends_a_real_message() -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        sink = SmtpSink(
            "127.0.0.1",
            port=server.server_address[1],
            sender="kit@example.com",
            recipients=["oncall@example.com"],
            starttls=False,
            password=SecretStr("unused"),
        )
        sink.send(make_alert(task="t.mail"))
    finally:
        server.shutdown()
        server.server_close()
    (message,) = _SmtpHandler.received
    assert "Subject: [celery] t.mail: final failure" in message
    assert "oncall@example.com" in message


def test_alert_payload_opt_in_is_redacted(app: Celery) -> None:
    sent: list[Alert] = []
    delivery = AlertDelivery([CallbackSink(sent.append)], LocalThrottle(window=60))
    dispatcher_for(app).subscribe(AlertObserver(delivery))
    calls: dict[str, Any] = {}

    @validated_task(app, shared=False, name="a.secret", alert_payload=True)
    def secret(user: str, api_secret: SecretStr, db_password: str) -> None:
        calls["secret"] = api_secret.get_secret_value()
        raise PermissionError("locked")

    secret.apply(kwargs={"user": "ada", "api_secret": "s-1", "db_password": "p-1"})
    delivery.close()
    assert calls["secret"] == "s-1"
    assert sent[0].payload == {"user": "ada", "api_secret": "**********", "db_password": "**********"}


def test_soft_timeouts_alert_as_such(app: Celery) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    sent: list[Alert] = []
    delivery = AlertDelivery([CallbackSink(sent.append)], LocalThrottle(window=60))
    dispatcher_for(app).subscribe(AlertObserver(delivery))

    @validated_task(app, shared=False, name="a.slow")
    def slow() -> None:
        raise SoftTimeLimitExceeded()

    slow.apply()
    delivery.close()
    assert [(a.kind, a.reason) for a in sent] == [(AlertKind.SOFT_TIMEOUT, "soft time limit")]


def test_kit_tasks_use_the_request_class_that_reports_hard_limits(app: Celery) -> None:
    from celery.utils.imports import symbol_by_name

    from celery_kit._request import KitRequest

    @validated_task(app, shared=False, name="a.req")
    def req() -> None: ...

    assert symbol_by_name(req.Request) is KitRequest


def test_sinks_from_configuration_strings() -> None:
    from celery_kit import ConfigurationError
    from celery_kit.alerts import LogSink, sinks_from_urls

    log, hook, slack, mail = sinks_from_urls(
        [
            "log",
            "https://hooks.example/alerts",
            SecretStr("slack+https://hooks.slack.com/services/T/B/X"),
            "smtp://bot:p%40ss@smtp.example:2525/?from=kit@example.com&to=a@example.com,b@example.com",
        ]
    )
    assert isinstance(log, LogSink)
    assert isinstance(hook, WebhookSink)
    assert (hook.url.get_secret_value(), hook.slack) == ("https://hooks.example/alerts", False)
    assert isinstance(slack, WebhookSink)
    assert (slack.url.get_secret_value(), slack.slack) == ("https://hooks.slack.com/services/T/B/X", True)
    assert isinstance(mail, SmtpSink)
    assert (mail.host, mail.port, mail.sender, mail.recipients) == (
        "smtp.example",
        2525,
        "kit@example.com",
        ["a@example.com", "b@example.com"],
    )
    assert mail.password is not None
    assert mail.password.get_secret_value() == "p@ss"
    with pytest.raises(ConfigurationError, match="unknown alert sink"):
        sinks_from_urls(["ftp://x"])
    with pytest.raises(ConfigurationError, match="needs a host"):
        sinks_from_urls(["smtp://smtp.example/?from=a@x"])


def test_instrument_takes_sinks_and_metrics_endpoint_from_kit_settings(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery_kit import instrument
    from celery_kit.settings import KitSettings

    monkeypatch.setenv("CELERY_KIT_BROKER_URL", "memory://")
    monkeypatch.setenv("CELERY_KIT_ALERT_SINKS", "log,https://hooks.example/x")
    monkeypatch.setenv("CELERY_KIT_METRICS_PORT", "9911")
    app.conf.update(KitSettings().celery_config(task_default_queue=app.conf.task_default_queue))
    wired = instrument(app, logging=False)
    assert wired.alerts is not None
    assert [sink.name for sink in wired.alerts.delivery.sinks] == ["log", "webhook"]
    assert wired.metrics is not None
    assert (wired.metrics.port, wired.metrics.host) == (9911, "0.0.0.0")


def test_no_message_field_can_stop_an_alert(app: Celery) -> None:
    """``retries`` comes from the message's headers: a garbage value is coerced, and an
    exception whose message cannot be read still alerts (issue 15)."""
    sent: list[Alert] = []
    delivery = AlertDelivery([CallbackSink(sent.append)], LocalThrottle(window=60))
    dispatcher_for(app).subscribe(AlertObserver(delivery))

    class Unreadable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no message")

    @validated_task(app, shared=False, name="a.garbled")
    def garbled(kind: str) -> None:
        # One exception type per call: the throttle keeps each its own incident.
        raise {"unreadable": Unreadable(), "a": PermanentError("refused")}.get(kind, ValueError(kind))

    garbled.apply(kwargs={"kind": "a"}, task_id="r-1", retries="abc")
    garbled.apply(kwargs={"kind": "b"}, task_id="r-2", retries="7")
    garbled.apply(kwargs={"kind": "unreadable"}, task_id="r-3")
    delivery.close()
    assert [(a.task_id, a.retries) for a in sent] == [("r-1", 0), ("r-2", 7), ("r-3", 0)]
    assert sent[2].exception_type == "Unreadable"
    assert "could not be read" in (sent[2].exception_message or "")
