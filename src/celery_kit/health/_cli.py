"""``python -m celery_kit.health``: the probe command line.

The probes (``worker``/``beat`` x ``live``/``ready``/``startup``) and ``serve`` use the
standard library only -- no Celery, no kombu, no pydantic, no user app -- so a probe costs
a few milliseconds, not the half second of CPU ``celery inspect ping`` takes. Only
``check`` imports the app, because talking to the broker is its job.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from ._state import default_beat_file, default_worker_file
from ._verdict import KINDS, PROBES, ExitCode, Thresholds, Verdict, probe_file

TYPE_CHECKING = False  # not typing's: every import costs the probe CLI
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["main"]

_EPILOG = """exit codes: 0 ok, 1 process not alive, 2 loop stale, 3 pool stalled,
4 not ready, 5 dependency down, 64 usage error. One JSON line on stdout says why."""


class UsageError(Exception):
    """Bad command line; exit 64 with a message saying what to do."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m celery_kit.health --help`)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: seconds must be >= 0 (or inf)")
    return value


def _add_thresholds(parser: argparse.ArgumentParser) -> None:
    d = Thresholds()
    add = parser.add_argument
    add(
        "--file",
        help="state file (default: $CELERY_KIT_HEALTH_FILE / $CELERY_KIT_HEALTH_BEAT_FILE, "
        "else the default path for node celery@<hostname> / beat)",
    )
    add(
        "--max-age",
        type=_seconds,
        help="beat older than this is stale (worker default 30; beat "
        "default max(2*max_interval, --beat-floor) + --beat-grace)",
    )
    add(
        "--stall-after",
        type=_seconds,
        default=d.stall_after,
        help=f"waiting requests, free slots, nothing accepted this long: stalled (default {d.stall_after:g})",
    )
    add(
        "--reconnect-grace",
        type=_seconds,
        default=d.reconnect_grace,
        help=f"broker outage tolerated by live, 'inf' for ever (default {d.reconnect_grace:g})",
    )
    add("--max-task-runtime", type=_seconds, help="fail live when a task runs longer than this")
    add(
        "--limit-slack",
        type=_seconds,
        default=d.limit_slack,
        help=f"seconds past a task's time limit before live fails (default {d.limit_slack:g})",
    )
    add("--beat-floor", type=_seconds, default=d.beat_floor, help=argparse.SUPPRESS)
    add("--beat-grace", type=_seconds, default=d.beat_grace, help=argparse.SUPPRESS)


def _thresholds(args: argparse.Namespace) -> Thresholds:
    return Thresholds(
        max_age=args.max_age,
        stall_after=args.stall_after,
        reconnect_grace=args.reconnect_grace,
        max_task_runtime=args.max_task_runtime,
        limit_slack=args.limit_slack,
        beat_floor=args.beat_floor,
        beat_grace=args.beat_grace,
    )


def state_file(kind: str, given: str | None) -> str:
    if given:
        return given
    return default_beat_file() if kind == "beat" else default_worker_file()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m celery_kit.health",
        description="Health probes for Celery workers and beat, read from the heartbeat state file.",
        epilog=_EPILOG,
    )
    sub = parser.add_subparsers(dest="command", metavar="{worker,beat,check,serve}", parser_class=_Parser)
    sub.required = True
    for kind in KINDS:
        kp = sub.add_parser(kind, help=f"probe a {kind}", epilog=_EPILOG)
        kp.add_argument("probe", choices=PROBES)
        _add_thresholds(kp)
    cp = sub.add_parser("check", help="dependencies: broker, result backend, queues (imports the app)")
    cp.add_argument("-A", "--app", required=True, help="the Celery app, as for `celery -A`")
    cp.add_argument("-Q", "--queues", help="comma-separated queues (default: the app's queues)")
    cp.add_argument("--timeout", type=_seconds, default=5.0, help="per dependency (default 5)")
    sp = sub.add_parser("serve", help="HTTP endpoints /livez /readyz /startupz /status")
    sp.add_argument("kind", nargs="?", choices=KINDS, default="worker")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8087, help="port (default 8087; 0 picks a free one)")
    _add_thresholds(sp)
    return parser


def _emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.command in KINDS:
            thresholds = _thresholds(args)
            path = state_file(args.command, args.file)
            verdict: Verdict = probe_file(args.command, args.probe, path, thresholds)
            _emit({"probe": f"{args.command} {args.probe}", **verdict.as_dict()})
            return int(verdict.code)
        if args.command == "serve":
            from ._http import serve

            return serve(
                args.kind, state_file(args.kind, args.file), _thresholds(args), host=args.host, port=args.port
            )
        from ._check import run_check  # the one command that imports Celery and the app

        report = run_check(args.app, queues=args.queues, timeout=args.timeout)
        _emit(report)
        return int(report["code"])
    except UsageError as exc:
        _emit(
            {"ok": False, "code": int(ExitCode.USAGE), "verdict": ExitCode.USAGE.verdict, "reason": str(exc)}
        )
        sys.stderr.write(f"celery_kit.health: {exc}\n")
        return int(ExitCode.USAGE)
