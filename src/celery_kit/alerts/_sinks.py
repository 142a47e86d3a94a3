"""Where alerts go. Sinks block and may fail: they only ever run on the delivery thread."""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from email.message import EmailMessage
from typing import Protocol, runtime_checkable

import structlog
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ._model import Alert

__all__ = ["Alerter", "CallbackSink", "LogSink", "SmtpSink", "WebhookSink"]


@runtime_checkable
class Alerter(Protocol):
    """A destination for alerts. ``send`` may block and raise; the caller copes."""

    name: str

    def send(self, alert: Alert) -> None: ...


class LogSink:
    """Alerts as structured log events (``celery_kit.alerts`` logger, level error)."""

    name = "log"

    def __init__(self) -> None:
        self._log = structlog.get_logger("celery_kit.alerts")

    def send(self, alert: Alert) -> None:
        self._log.error("alert", summary=alert.summary, **alert.model_dump(mode="json"))


class CallbackSink:
    """Alerts passed to a function of yours (on the delivery thread)."""

    def __init__(self, callback: Callable[[Alert], object], name: str = "callback") -> None:
        self.callback = callback
        self.name = name

    def send(self, alert: Alert) -> None:
        self.callback(alert)


class WebhookSink:
    """POSTs JSON to a URL: the alert itself, or Slack-compatible ``{"text": ...}``.

    Args:
        url: the endpoint; kept as a secret (webhook URLs are credentials).
        slack: send ``{"text": summary}`` for Slack/Mattermost-style incoming webhooks.
        timeout: seconds per request.
        retries: further attempts after a failed one (tenacity, exponential wait).
    """

    def __init__(
        self,
        url: str | SecretStr,
        *,
        slack: bool = False,
        timeout: float = 5.0,
        retries: int = 2,
        headers: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.url = url if isinstance(url, SecretStr) else SecretStr(url)
        self.slack = slack
        self.timeout = timeout
        self.retries = retries
        self.headers = dict(headers or {})
        self.name = name or ("slack" if slack else "webhook")

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, slack={self.slack})"

    def body(self, alert: Alert) -> bytes:
        if self.slack:
            text = alert.summary + (f"\n{alert.link}" if alert.link else "")
            return json.dumps({"text": text}).encode()
        return alert.model_dump_json().encode()

    def send(self, alert: Alert) -> None:
        request = urllib.request.Request(
            self.url.get_secret_value(),
            data=self.body(alert),
            headers={"Content-Type": "application/json", **self.headers},
            method="POST",
        )
        for attempt in Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=0.2, max=2),
            retry=retry_if_exception_type((urllib.error.URLError, OSError)),
            reraise=True,
        ):
            with attempt, urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()


class SmtpSink:
    """Alerts by email."""

    def __init__(
        self,
        host: str,
        *,
        sender: str,
        recipients: Sequence[str],
        port: int = 587,
        username: str | None = None,
        password: str | SecretStr | None = None,
        starttls: bool = True,
        timeout: float = 10.0,
        name: str = "smtp",
    ) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = list(recipients)
        self.username = username
        self.password = SecretStr(password) if isinstance(password, str) else password
        self.starttls = starttls
        self.timeout = timeout
        self.name = name

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = f"[celery] {alert.summary}"[:200]
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(json.dumps(alert.model_dump(mode="json"), indent=2))
        return message

    def send(self, alert: Alert) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username and self.password is not None:
                smtp.login(self.username, self.password.get_secret_value())
            smtp.send_message(self.message(alert))


logging.getLogger("celery_kit.alerts")  # the log sink's logger, for handlers to find
