"""Dependency checks that need the app: ``check`` and :func:`health_check`.

These import Celery and talk to the broker, so they are for humans, dashboards and
readiness gates of *other* services -- never a worker's liveness probe: a broker outage
would fail every worker's liveness at once and restart them all, which fixes nothing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypedDict, TypeVar

__all__ = ["HealthReport", "check_dependencies", "health_check", "run_check"]

T = TypeVar("T")


class HealthReport(TypedDict):
    """What :func:`health_check` returns."""

    workers: int
    active_tasks: int
    nodes: dict[str, int]


def health_check(app: Any, *, timeout: float = 1.0, limit: int | None = None) -> HealthReport:
    """Workers that answered and their active tasks, via one ``inspect().active()`` broadcast.

    For dashboards and smoke tests -- **not a liveness probe**: it costs a broker round
    trip and ``timeout`` seconds of waiting for replies, a busy worker may answer late,
    and a broker outage makes every worker look dead. Use the state-file probes
    (``python -m celery_kit.health worker live``) for Kubernetes.

    Args:
        timeout: seconds to wait for replies.
        limit: stop waiting once this many workers replied (a known fleet size makes the
            call return as soon as everyone answered).
    """
    replies = app.control.inspect(timeout=timeout, limit=limit).active() or {}
    nodes = {str(node): len(tasks or ()) for node, tasks in replies.items()}
    return {"workers": len(nodes), "active_tasks": sum(nodes.values()), "nodes": nodes}


def _within(timeout: float, work: Callable[[], T]) -> T:
    """Run ``work`` in a daemon thread; a blackholed host must not hang the check."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="celery-kit-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _queue_names(app: Any, queues: Iterable[str] | None) -> list[str]:
    if queues:
        return [q for q in queues if q]
    configured = app.conf.task_queues
    if configured:
        return [q.name for q in configured]
    return [app.conf.task_default_queue]


def _broker(app: Any, queues: list[str], timeout: float) -> dict[str, Any]:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        transport = conn.transport.driver_type
        result: dict[str, Any] = {"ok": True, "url": conn.as_uri(), "transport": transport}
        depths: dict[str, Any] = {}
        if transport == "redis":
            channel = conn.default_channel
            client = channel.client
            for queue in queues:
                keys = {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}
                depths[queue] = {"messages": sum(int(client.llen(k)) for k in keys), "consumers": None}
            result["unacked"] = int(client.hlen(channel.unacked_key))
        else:
            for queue in queues:
                try:
                    with conn.channel() as channel:
                        _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
                    depths[queue] = {"messages": int(messages), "consumers": int(consumers)}
                except conn.channel_errors as exc:
                    depths[queue] = {"messages": None, "consumers": None, "error": str(exc)}
        result["queues"] = depths
        return result


def _backend(app: Any) -> dict[str, Any]:
    backend = app.backend
    name = type(backend).__name__
    if name == "DisabledBackend":
        return {"ok": True, "backend": "disabled"}
    if type(backend).__module__.endswith(".rpc"):
        return {"ok": True, "backend": name, "note": "the rpc backend is the broker"}
    # A read of a key that does not exist: a real round trip on every key-value and
    # database backend, with no write and nothing left behind.
    backend.get_task_meta(f"celery-kit-health-{uuid.uuid4().hex}")
    return {"ok": True, "backend": name}


def check_dependencies(
    app: Any, *, queues: Iterable[str] | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """Broker reachable, result backend answering, depth (and consumers) of each queue.

    Redis: depth is ``LLEN`` summed over the queue's priority sub-queues; ``unacked`` is
    the transport's whole unacknowledged-message hash (Redis has no per-queue count of
    it), and consumer counts are ``None`` (Redis keeps no consumer registry; use
    :func:`health_check`). RabbitMQ: a passive ``queue_declare`` per queue.

    Returns a JSON-safe dict with ``ok``, ``code`` (0 or 5), ``reason`` and the details.
    """
    names = _queue_names(app, queues)
    report: dict[str, Any] = {"probe": "check"}
    problems = []
    try:
        broker = _within(timeout + 1, lambda: _broker(app, names, timeout))
        report["queues"] = broker.pop("queues")
        report["broker"] = broker
    except Exception as exc:
        report["broker"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        problems.append("broker unreachable")
    try:
        report["backend"] = _within(timeout, lambda: _backend(app))
    except Exception as exc:
        report["backend"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        problems.append("result backend unreachable")
    ok = not problems
    report.update(
        ok=ok,
        code=0 if ok else 5,
        verdict="ok" if ok else "dependency down",
        reason="broker and result backend reachable" if ok else "; ".join(problems),
    )
    return report


def run_check(app_name: str, *, queues: str | None, timeout: float) -> dict[str, Any]:
    """The ``check`` subcommand: load the app like ``celery -A`` and check it."""
    try:
        from celery.app.utils import find_app

        app = find_app(app_name)
    except Exception as exc:
        return {
            "probe": "check",
            "ok": False,
            "code": 64,
            "verdict": "usage error",
            "reason": f"cannot load the app {app_name!r} ({type(exc).__name__}: {exc}); pass -A as "
            "for `celery -A`, from the directory your app is importable from",
        }
    return check_dependencies(app, queues=(queues or "").split(",") if queues else None, timeout=timeout)
