"""Two ways to watch a Redis from outside: the commands its clients send, and their round trips.

* :class:`CommandLog` -- ``MONITOR`` through ``redis-cli``: every command a client sent,
  with the server's timestamp (commands a Lua script runs are told apart and left out).
* :class:`LatencyProxy` -- a TCP proxy that delays every reply by a set time. A client
  that waits for a reply waits ``delay`` seconds longer through it; one that sends and
  reads later does not. So the time a step takes, divided by ``delay``, is the number of
  round trips it waited for -- measured from outside, whatever the code under test does.
"""

from __future__ import annotations

import contextlib
import queue
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
import redis


class CommandLog:
    """The commands clients send to the Redis on ``port``, from ``MONITOR``, while it runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._lines: list[str] = []
        binary = shutil.which("redis-cli")
        if binary is None:
            pytest.fail("redis-cli is not installed; the command counts read MONITOR with it", pytrace=False)
        self._process = subprocess.Popen(
            [binary, "-p", str(port), "monitor"], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._process.stdout is not None
        if self._process.stdout.readline().strip() != "OK":
            pytest.fail(f"MONITOR did not start on the Redis at port {port}", pytrace=False)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.append(line)

    def sync(self) -> None:
        """Wait until every command sent so far is in the log (a marker command comes last)."""
        marker = uuid.uuid4().hex
        with redis.Redis(port=self.port) as client:
            client.echo(marker)
        deadline = time.monotonic() + 10
        while not any(marker in line for line in self._lines[-50:]):
            if time.monotonic() > deadline:
                pytest.fail("MONITOR lost a command", pytrace=False)
            time.sleep(0.01)

    def commands(self, since: float, until: float) -> list[str]:
        """Commands clients sent between two ``time.time()`` readings (not a script's, not ours)."""
        found = []
        for line in list(self._lines):
            stamp, _, rest = line.partition(" ")
            if not rest.startswith("[") or rest.split("]", 1)[0].endswith(" lua"):
                continue
            command = rest.split("] ", 1)[1].split(" ", 1)[0].strip('"').upper()
            if since <= float(stamp) <= until and command != "ECHO":
                found.append(command)
        return found

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        self._reader.join(10)


class LatencyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream``; replies (server to client) wait ``delay`` s."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="latency-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets.append(sock)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            replies: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._read_replies, args=(server, replies), daemon=True).start()
            threading.Thread(target=self._send_replies, args=(replies, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        """Requests go through at once."""
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    def _read_replies(self, server: socket.socket, replies: queue.Queue[tuple[float, bytes]]) -> None:
        chunk = b""
        with contextlib.suppress(OSError):
            while chunk := server.recv(65536):
                replies.put((time.monotonic() + self.delay, chunk))
        replies.put((time.monotonic() + self.delay, b""))

    def _send_replies(self, replies: queue.Queue[tuple[float, bytes]], client: socket.socket) -> None:
        """Each reply leaves ``delay`` after it arrived, in order."""
        while True:
            due, chunk = replies.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not chunk:
                    client.shutdown(socket.SHUT_WR)
                    return
                client.sendall(chunk)
            except OSError:
                return
