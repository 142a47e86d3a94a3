"""A tiny real SMTP server for the tests, on 127.0.0.1 and a free port.

It speaks enough of RFC 5321 for :mod:`smtplib` (EHLO/HELO, MAIL, RCPT, DATA, RSET,
NOOP, QUIT), keeps every message it accepts, and can be told to misbehave the way real
relays do:

* :meth:`SmtpReceiver.refuse_next_connections` -- greet the next N connections with
  ``421 service not available`` and hang up (a relay under load);
* :meth:`SmtpReceiver.defer` -- answer ``451 try again later`` to the first N ``RCPT TO``
  of an address (greylisting);
* :meth:`SmtpReceiver.reject` -- answer ``550 no such user`` to an address, always;
* :meth:`SmtpReceiver.stall` -- take a message for an address, then never confirm it
  (until :meth:`SmtpReceiver.close`): a relay that hangs after ``DATA``.

The standard library lost ``smtpd`` in Python 3.12, and ``aiosmtpd`` is not a dependency,
hence this ~150-line server on :mod:`socketserver`.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

__all__ = ["Received", "SmtpReceiver"]


@dataclass
class Received:
    """One message the server accepted."""

    mail_from: str
    rcpt_to: list[str]
    data: bytes
    message: EmailMessage = field(init=False)

    def __post_init__(self) -> None:
        # On the wire lines end in CRLF; parsed, they end in "\n" like any Python text.
        text = self.data.replace(b"\r\n", b"\n")
        self.message = message_from_bytes(text, policy=policy.default)


def _address(argument: str) -> str:
    """``TO:<a@b.c> SIZE=10`` -> ``a@b.c``."""
    value = argument.split(":", 1)[1].strip() if ":" in argument else argument
    return value.split(">", 1)[0].lstrip("<").strip().lower()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        receiver = self.server.receiver
        if not receiver._admit():
            self.reply("421 4.3.2 Service not available, try again later")
            return
        self.reply("220 test-smtp ESMTP ready")
        mail_from = ""
        rcpts: list[str] = []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            command, _, argument = raw.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            verb = command.upper()
            if verb == "EHLO":
                self.reply("250-test-smtp\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING")
            elif verb == "HELO":
                self.reply("250 test-smtp")
            elif verb == "MAIL":
                mail_from, rcpts = _address(argument), []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                address = _address(argument)
                answer = receiver._rcpt(address)
                if answer.startswith("250"):
                    rcpts.append(address)
                self.reply(answer)
            elif verb == "DATA":
                if not rcpts:
                    self.reply("503 5.5.1 No valid recipients")
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data()
                if data is None:
                    return
                if any(receiver._stalls(r) for r in rcpts):
                    receiver._release.wait(receiver.stall_seconds)
                    return  # hang up without confirming: the client never learns the outcome
                receiver._store(Received(mail_from, list(rcpts), data))
                self.reply("250 2.0.0 Ok: queued")
                mail_from, rcpts = "", []
            elif verb == "RSET":
                mail_from, rcpts = "", []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not recognized")

    def _read_data(self) -> bytes | None:
        lines: list[bytes] = []
        while True:
            line = self.rfile.readline()
            if not line:
                return None
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b"..") else line)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)


class SmtpReceiver:
    """The server, running in a background thread from construction until :meth:`close`."""

    def __init__(self, stall_seconds: float = 30.0) -> None:
        self.stall_seconds = stall_seconds
        self.messages: list[Received] = []
        #: ``RCPT TO`` commands seen per address, whatever the answer.
        self.rcpt_attempts: Counter[str] = Counter()
        self.connections = 0
        self._lock = threading.Lock()
        self._refuse = 0
        self._defer: Counter[str] = Counter()
        self._reject: set[str] = set()
        self._stall: set[str] = set()
        self._release = threading.Event()
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="smtp-receiver", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    # -- misbehaviour -----------------------------------------------------------------------

    def refuse_next_connections(self, count: int) -> None:
        with self._lock:
            self._refuse = count

    def defer(self, address: str, times: int) -> None:
        with self._lock:
            self._defer[address.lower()] = times

    def reject(self, address: str) -> None:
        with self._lock:
            self._reject.add(address.lower())

    def stall(self, address: str) -> None:
        with self._lock:
            self._stall.add(address.lower())

    def behave(self) -> None:
        """Forget every misbehaviour asked for (connections stalled now are released)."""
        with self._lock:
            self._refuse = 0
            self._defer.clear()
            self._reject.clear()
            self._stall.clear()
        self._release.set()
        self._release = threading.Event()

    # -- reading what arrived ---------------------------------------------------------------

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if address.lower() in m.rcpt_to]

    def wait_for(self, predicate: Callable[[SmtpReceiver], Any], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"SMTP server: condition not met within {timeout}s; received {len(self.messages)} "
                    f"message(s), RCPT attempts {dict(self.rcpt_attempts)}"
                )
            time.sleep(0.05)

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    # -- called by the handler --------------------------------------------------------------

    def _admit(self) -> bool:
        with self._lock:
            self.connections += 1
            if self._refuse > 0:
                self._refuse -= 1
                return False
            return True

    def _rcpt(self, address: str) -> str:
        with self._lock:
            self.rcpt_attempts[address] += 1
            if address in self._reject:
                return f"550 5.1.1 <{address}>: Recipient address rejected: no such user"
            if self._defer[address] > 0:
                self._defer[address] -= 1
                return f"451 4.7.1 <{address}>: greylisted, try again later"
            return "250 2.1.5 Ok"

    def _stalls(self, address: str) -> bool:
        with self._lock:
            return address in self._stall

    def _store(self, received: Received) -> None:
        with self._lock:
            self.messages.append(received)
