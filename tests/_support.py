"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not reached within {timeout}s")


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among ``text``'s lines (a worker log mixes them with plain lines)."""
    lines = []
    for raw in text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def count_attempts(app: Any, state: Any, prefix: str) -> None:
    """Count every execution attempt ``app``'s worker starts (invalid payloads included) in
    Redis under ``{prefix}:attempts:{task_id}``; tests count attempts instead of trusting
    results."""
    from celery import signals

    def count_attempt(sender: Any = None, task_id: str | None = None, **_: object) -> None:
        if sender is not None and sender.app is app:
            state.incr(f"{prefix}:attempts:{task_id}")

    signals.task_prerun.connect(count_attempt, weak=False)
    app._kit_test_receivers = [count_attempt]
