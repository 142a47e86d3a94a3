"""Private broker processes for tests that stop, kill or restart their broker.

The machine's shared Redis and RabbitMQ are never touched by such a test: each one starts
its own server on a free port, with its own data directory, and stops it afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from ._support import free_port, wait_for

#: Where Debian's rabbitmq-server keeps its real scripts: the ``/usr/sbin`` wrappers switch
#: to the ``rabbitmq`` user and drop the environment that makes a node private.
RABBITMQ_BIN = Path(os.environ.get("CELERY_KIT_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


def drop_queue(app: Celery, queue: str) -> int:
    """Delete ``queue``; return how many messages were still in it (Redis keeps no empty list:
    no queue, no message)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        try:
            _, left, _ = channel.queue_declare(queue, passive=True)
        except conn.channel_errors:
            return 0
        channel.queue_delete(queue)
    return int(left)


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


class PrivateRedis:
    """A ``redis-server`` of one test, on a free port, that the test may stop and start.

    With ``persistent=True`` it writes an append-only file fsynced on every write, so a
    ``SHUTDOWN NOSAVE`` followed by :meth:`start` loses nothing the server acknowledged --
    the setting a team that relies on Redis as a broker must run with.
    """

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; this test starts its own", pytrace=False)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += persistence or ["--appendonly", "no"]
        command += ["--daemonize", "no", "--dir", str(self.directory)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_for(answers, timeout=20)
        finally:
            client.close()

    def shutdown_nosave(self) -> None:
        """``SHUTDOWN NOSAVE``: the server exits at once, keeping only what its AOF holds."""
        client = self.client()
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()
        if self.process is not None:
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class PrivateRabbit:
    """A RabbitMQ node of one test: its own node name, ports, data, logs, cookie and config.

    Starting one takes 5-10 s, so tests share it per module. :meth:`stop` then :meth:`start`
    restarts the whole node on the same data: durable queues and persistent messages
    survive, connections do not.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        dist_port = free_port()
        self.node = f"kit{self.port}@localhost"
        for sub in ("mnesia", "log", "home"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text("loopback_users = none\n")
        (directory / "rabbitmq-env.conf").write_text("")
        (directory / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(directory / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _run(self, *args: str, timeout: float = 60) -> None:
        tool = RABBITMQ_BIN / args[0]
        if not tool.exists():
            pytest.fail(f"{tool} not found; this test starts its own RabbitMQ node", pytrace=False)
        subprocess.run(
            [str(tool), *args[1:]],
            env=self.env,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self, timeout: float = 90) -> None:
        self._run("rabbitmq-server", "-detached")
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-3000:] for p in (self.directory / "log").glob("*.log"))
                pytest.fail(f"private RabbitMQ node {self.node} did not start:\n{logs}", pytrace=False)
            time.sleep(0.25)

    def stop(self) -> None:
        if _port_open(self.port):
            self._run("rabbitmqctl", "-n", self.node, "stop")
        else:  # stopped already, or half started: make sure no node is left behind
            subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "stop"],
                env=self.env,
                check=False,
                timeout=60,
                capture_output=True,
            )
        deadline = time.monotonic() + 30
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
