"""What the tests share besides fixtures: the service's folder and the running service."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery_kit.testing import WorkerProcess

__all__ = ["EXAMPLE_DIR", "Service", "free_port", "wait_until"]

#: The service's folder: the worker's working directory and ``PYTHONPATH``.
EXAMPLE_DIR = Path(__file__).resolve().parents[1]


@dataclass
class Service:
    """The running worker and where it writes."""

    worker: WorkerProcess
    metrics_port: int
    health_file: Path
    reports_dir: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)
