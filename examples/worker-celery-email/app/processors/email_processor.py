"""Sending one email through an SMTP relay, and telling transient refusals from final ones.

Nothing here knows about Celery: :class:`SmtpSender` talks SMTP and raises what
:mod:`smtplib` raises; :func:`is_permanent` says whether another attempt could succeed
(SMTP's own rule: ``4xx`` means *try again later*, ``5xx`` means *no*). The task decides
what to do with that (:mod:`app.tasks.email`).
"""

from __future__ import annotations

import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

from app.config import SmtpSettings

__all__ = ["SMTP_ERRORS", "SmtpSender", "describe", "is_permanent"]

#: What a send can fail with: SMTP replies and protocol errors (``smtplib.SMTPException``),
#: a refused or reset connection (``ConnectionError``), a server that stops answering
#: (``TimeoutError``, after ``SMTP_TIMEOUT`` seconds).
SMTP_ERRORS: tuple[type[Exception], ...] = (smtplib.SMTPException, ConnectionError, TimeoutError)


def is_permanent(exc: BaseException) -> bool:
    """True when another attempt cannot succeed: a ``5xx`` reply, or a configuration error.

    ``4xx`` replies (greylisting, a full queue, ``421`` service not available), dropped
    connections and timeouts are transient.
    """
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return bool(codes) and all(code >= 500 for code in codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code >= 500
    # STARTTLS or AUTH asked for, but the server does not offer it: fix SMTP_* instead.
    return isinstance(exc, smtplib.SMTPNotSupportedError)


def describe(exc: BaseException) -> str:
    """The SMTP reply code(s) of ``exc``, without addresses: safe for alerts and results."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({code for code, _ in exc.recipients.values()})
        return "recipient refused, SMTP " + ", ".join(map(str, codes))
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"SMTP {exc.smtp_code}"
    return type(exc).__name__


class SmtpSender:
    """Compose and send emails through the relay given by :class:`~app.config.SmtpSettings`.

    One connection per email: a worker process holds no idle SMTP session that the
    server may drop between tasks, and a failed session is never reused.
    """

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        _, address = parseaddr(settings.sender)
        self.sender_address = address or settings.sender
        self.domain = self.sender_address.rpartition("@")[2] or "localhost"

    def message_id(self, key: str) -> str:
        """A ``Message-ID`` derived from ``key`` (the task id): the same on every retry,
        so receiving systems can drop a duplicate when a retry follows a lost reply."""
        return f"<{key}@{self.domain}>"

    def compose(
        self, to: str, subject: str, body: str, *, message_id: str, reply_to: str | None = None
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = Address(addr_spec=to)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = message_id
        if reply_to:
            message["Reply-To"] = Address(addr_spec=reply_to)
        message.set_content(body)
        return message

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.ssl:
            return smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=ssl.create_default_context())
        return smtplib.SMTP(s.host, s.port, timeout=s.timeout)

    def send(self, message: EmailMessage) -> None:
        """Deliver ``message`` to the relay; returns once the relay accepted it.

        Raises:
            smtplib.SMTPException, ConnectionError, TimeoutError: see :data:`SMTP_ERRORS`;
                :func:`is_permanent` tells them apart.
        """
        s = self.settings
        smtp = self._connect()  # reads the greeting: a 4xx/5xx one raises SMTPConnectError
        try:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                smtp.login(s.username, password)
            smtp.send_message(message, from_addr=self.sender_address)
        except BaseException:
            # No QUIT: the session is broken, or the soft time limit interrupted it and a
            # QUIT to a server that stopped answering would block until the hard limit.
            smtp.close()
            raise
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()  # the relay has the message already; a failed goodbye is no failure
