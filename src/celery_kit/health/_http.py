"""``python -m celery_kit.health serve``: the probes over HTTP, for platforms that want URLs.

A separate process (standard library :class:`~http.server.ThreadingHTTPServer`) that
reads the state file on every request, exactly like the CLI. It is deliberately not a
thread inside the worker: a thread would answer while the worker's loop is deadlocked,
which is the failure the probes exist to catch. Bound to 127.0.0.1 unless ``--host``
says otherwise, because ``/status`` shows pids and task names.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._state import StateFileError, read_state
from ._verdict import Thresholds, probe_file

__all__ = ["make_server", "serve"]

ROUTES = {"/livez": "live", "/readyz": "ready", "/startupz": "startup"}


def make_server(kind: str, path: str, thresholds: Thresholds, host: str, port: int) -> ThreadingHTTPServer:
    """A server answering the probes of the ``kind`` state file at ``path``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "celery-kit-health"

        def do_GET(self) -> None:
            route = self.path.split("?", 1)[0]
            if route in ROUTES:
                verdict = probe_file(kind, ROUTES[route], path, thresholds)
                self._send(
                    200 if verdict.ok else 503, {"probe": f"{kind} {ROUTES[route]}", **verdict.as_dict()}
                )
            elif route == "/status":
                try:
                    state: Any = read_state(path, kind)
                except StateFileError as exc:
                    state = {"error": str(exc)}
                body = {p: probe_file(kind, p, path, thresholds).as_dict() for p in ROUTES.values()}
                self._send(200, {"kind": kind, "file": path, "state": state, **body})
            else:
                self._send(404, {"error": f"no such endpoint {route}; try {', '.join(ROUTES)} or /status"})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve(kind: str, path: str, thresholds: Thresholds, *, host: str, port: int) -> int:
    """Serve until interrupted; prints where it listens as one JSON line on stderr."""
    try:
        server = make_server(kind, path, thresholds, host, port)
    except OSError as exc:
        sys.stderr.write(
            f"celery_kit.health: cannot listen on {host}:{port}: {exc}. Choose another --port.\n"
        )
        return 64
    bound_host, bound_port = server.server_address[:2]
    sys.stderr.write(json.dumps({"serving": f"http://{bound_host!s}:{bound_port}", "file": path}) + "\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
