"""Probe verdicts: pure functions from a state file to an exit code and a reason.

Standard library only, and no I/O beyond reading the state file and asking the kernel
whether a pid is alive: this is what runs every few seconds in every pod.

The rules, and why:

* **live** answers "would a restart help?". A broker outage is not fixed by restarting
  workers, so live stays ``0`` while the worker is reconnecting, for ``reconnect_grace``
  seconds. It fails when the worker's event loop stopped beating (a deadlock, a frozen
  process), when the pool stopped taking work (requests waiting, free slots, and the
  accepted counter frozen for ``stall_after``), or when a task runs past its time limit
  (or ``max_task_runtime``) by more than ``limit_slack``.
* **ready** answers "is it consuming now?": consuming with a fresh beat. During a broker
  outage it fails at once with ``5`` (dependency down).
* **startup** answers "has it ever got going?": the consuming phase was reached once, so
  a slow start is not mistaken for a hang by the liveness probe.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ._state import StateFileError, process_start_stamp, process_state, read_state

TYPE_CHECKING = False  # not typing's: every import costs the probe CLI
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "DEFAULT_WORKER_MAX_AGE",
    "KINDS",
    "PROBES",
    "ExitCode",
    "Thresholds",
    "Verdict",
    "evaluate",
    "pid_alive",
    "probe_file",
]

KINDS = ("worker", "beat")
#: Worker beat age limit when ``--max-age`` is not given: many beats (2 s each) missed.
DEFAULT_WORKER_MAX_AGE = 30.0
PROBES = ("live", "ready", "startup")


class ExitCode(enum.IntEnum):
    """The probe's exit status; Kubernetes only looks at zero / non-zero, people at the rest."""

    OK = 0
    NOT_ALIVE = 1
    LOOP_STALE = 2
    POOL_STALLED = 3
    NOT_READY = 4
    DEPENDENCY_DOWN = 5
    USAGE = 64

    @property
    def verdict(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclass(frozen=True)
class Thresholds:
    """Seconds. Defaults suit a probe run every 10-30 s; every one is a CLI flag."""

    #: A worker beat older than this is stale (``--max-age``). For beat, ``None`` means
    #: ``max(2 * max_interval, beat_floor) + beat_grace``.
    max_age: float | None = None
    #: Requests waiting with free slots and no task accepted for this long: pool stalled.
    stall_after: float = 60.0
    #: How long a broker outage may last before live fails (``inf``: never).
    reconnect_grace: float = 300.0
    #: Fail live when any task runs longer than this, whatever its own limit (``None``: off).
    max_task_runtime: float | None = None
    #: Celery enforces hard limits itself; a task past its limit by less than this is
    #: given the benefit of the doubt.
    limit_slack: float = 5.0
    #: Beat staleness: ``max(2 * max_interval, beat_floor) + beat_grace``.
    beat_floor: float = 60.0
    beat_grace: float = 10.0

    def __post_init__(self) -> None:
        for name in ("max_age", "stall_after", "reconnect_grace", "max_task_runtime", "limit_slack"):
            value = getattr(self, name)
            if value is not None and (math.isnan(value) or value < 0):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")
        for name in ("beat_floor", "beat_grace"):
            value = getattr(self, name)
            if math.isnan(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value}")

    def worker_max_age(self) -> float:
        return DEFAULT_WORKER_MAX_AGE if self.max_age is None else self.max_age

    def beat_max_age(self, max_interval: float) -> float:
        if self.max_age is not None:
            return self.max_age
        return max(2 * max_interval, self.beat_floor) + self.beat_grace


@dataclass(frozen=True)
class Verdict:
    """One probe answer: the exit code, a one-line reason, and a few facts for ``/status``."""

    code: ExitCode
    reason: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code is ExitCode.OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "code": int(self.code),
            "verdict": self.code.verdict,
            "reason": self.reason,
            **self.details,
        }


def pid_alive(pid: int, start_stamp: str | None) -> tuple[bool, str]:
    """Whether ``pid`` is the process that wrote the file, and if not, why."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, f"process {pid} is gone"
    except PermissionError:
        pass  # exists, owned by another user
    if process_state(pid) in ("Z", "X"):
        return False, f"process {pid} has exited (zombie)"
    if start_stamp is not None:
        current = process_start_stamp(pid)
        if current is not None and current != start_stamp:
            return False, f"process {pid} is gone; the pid now belongs to another process"
    return True, ""


def _age(now: float, since: Any) -> float:
    return now - float(since) if isinstance(since, (int, float)) else math.inf


def _overrun(
    entry: Mapping[str, Any] | None, now: float, t: Thresholds, what: str
) -> tuple[bool, str] | None:
    """``(past_limit, reason)`` for a running task, or ``None`` when there is none."""
    if not entry:
        return None
    age = _age(now, entry.get("since"))
    limits = [float(x) for x in (entry.get("time_limit"), t.max_task_runtime) if x is not None]
    limit = min(limits) if limits else None
    task = entry.get("task", "?")
    if limit is not None and age > limit + t.limit_slack:
        source = "max_task_runtime" if limit == t.max_task_runtime else "its time limit"
        return True, f"task {task} {what} for {age:.1f}s, past {source} of {limit:g}s"
    shown = f"{limit:g}s" if limit is not None else "none (set --max-task-runtime)"
    return False, f"task {task} {what} for {age:.1f}s (limit {shown})"


def _worker(probe: str, s: Mapping[str, Any], now: float, t: Thresholds) -> Verdict:
    phase = s.get("phase")
    facts = {"phase": phase, "pid": s.get("pid")}
    reached = bool(s.get("consumed_once"))
    if probe == "startup":
        if reached:
            return Verdict(ExitCode.OK, "consuming phase reached", facts)
        return Verdict(ExitCode.NOT_READY, f"not consuming yet (phase {phase})", facts)

    if phase == "reconnecting":
        down = _age(now, s.get("phase_since"))
        facts["down_for"] = round(down, 3)
        if probe == "ready":
            return Verdict(ExitCode.DEPENDENCY_DOWN, f"broker connection lost {down:.1f}s ago", facts)
        if down <= t.reconnect_grace:
            return Verdict(
                ExitCode.OK,
                f"reconnecting to the broker for {down:.1f}s (grace {t.reconnect_grace:g}s)",
                facts,
            )
        return Verdict(
            ExitCode.DEPENDENCY_DOWN,
            f"broker unreachable for {down:.1f}s, past the reconnect grace of {t.reconnect_grace:g}s",
            facts,
        )
    if phase in ("starting", "stopping"):
        if probe == "ready":
            return Verdict(ExitCode.NOT_READY, f"{phase}, not consuming", facts)
        return Verdict(ExitCode.OK, phase, facts)
    if phase != "consuming":
        return Verdict(ExitCode.NOT_READY, f"unknown phase {phase!r}", facts)

    # Solo pool: the loop is blocked while a task runs; the task is the evidence.
    executing = s.get("executing")
    if executing:
        past, reason = _overrun(executing, now, t, "executing") or (False, "")
        if past:
            return Verdict(ExitCode.POOL_STALLED, reason, facts)
        return Verdict(ExitCode.OK, f"busy: {reason}", facts)

    max_age = t.worker_max_age()
    age = _age(now, s.get("mono"))
    facts["beat_age"] = round(age, 3)
    if age > max_age:
        return Verdict(ExitCode.LOOP_STALE, f"event loop silent for {age:.1f}s (max age {max_age:g}s)", facts)
    for key, what in (("next_deadline", "running"), ("oldest_active", "running")):
        overrun = _overrun(s.get(key), now, t, what)
        if overrun is not None and overrun[0]:
            return Verdict(ExitCode.POOL_STALLED, overrun[1], facts)
    waiting = int(s.get("waiting") or 0)
    free = int(s.get("free_slots") or 0)
    if waiting and free and s.get("waiting_since") is not None:
        stalled = now - max(float(s["waiting_since"]), float(s.get("accepted_changed") or 0))
        if stalled >= t.stall_after:
            return Verdict(
                ExitCode.POOL_STALLED,
                f"{waiting} request(s) waiting with {free} free slot(s) and no task accepted "
                f"for {stalled:.1f}s (stall after {t.stall_after:g}s)",
                facts,
            )
    return Verdict(ExitCode.OK, f"consuming; beat {age:.1f}s ago", facts)


def _beat(probe: str, s: Mapping[str, Any], now: float, t: Thresholds) -> Verdict:
    phase = s.get("phase")
    facts = {"phase": phase, "pid": s.get("pid")}
    if probe == "startup":
        if phase in ("running", "standby"):
            return Verdict(ExitCode.OK, f"{phase}", facts)
        return Verdict(ExitCode.NOT_READY, f"not started (phase {phase})", facts)
    max_interval = float(s.get("max_interval") or 0)
    max_age = t.beat_max_age(max_interval)
    age = _age(now, s.get("mono"))
    facts["beat_age"] = round(age, 3)
    if phase not in ("running", "standby"):
        if probe == "ready":
            return Verdict(ExitCode.NOT_READY, f"{phase}, not scheduling", facts)
        return Verdict(ExitCode.OK, str(phase), facts)
    if age > max_age:
        what = "scheduler has not ticked" if phase == "running" else "standby keep-alive silent"
        return Verdict(ExitCode.LOOP_STALE, f"{what} for {age:.1f}s (max age {max_age:g}s)", facts)
    if phase == "standby":
        if probe == "ready":
            return Verdict(ExitCode.NOT_READY, "standby: waiting to become the active scheduler", facts)
        return Verdict(ExitCode.OK, f"standby; alive {age:.1f}s ago", facts)
    return Verdict(ExitCode.OK, f"ticking; last tick {age:.1f}s ago", facts)


def evaluate(
    kind: str,
    probe: str,
    state: Mapping[str, Any],
    thresholds: Thresholds,
    *,
    now: float | None = None,
    alive: Callable[[int, str | None], tuple[bool, str]] = pid_alive,
) -> Verdict:
    """The verdict of ``probe`` (``live``, ``ready``, ``startup``) on a ``kind`` state.

    ``now`` is :func:`time.monotonic` (the state's clock: immune to wall-clock jumps).
    """
    if kind not in KINDS or probe not in PROBES:
        raise ValueError(f"unknown probe {kind} {probe}")
    if state.get("kind") != kind:
        return Verdict(
            ExitCode.USAGE,
            f"the state file belongs to a {state.get('kind')}, not a {kind}; "
            f"probe it with `{state.get('kind')} {probe}` or pass the {kind}'s --file",
        )
    pid = state.get("pid")
    if not isinstance(pid, int):
        return Verdict(ExitCode.NOT_ALIVE, "state file has no pid")
    is_alive, why = alive(pid, state.get("start_stamp"))
    if not is_alive:
        return Verdict(ExitCode.NOT_ALIVE, why, {"phase": state.get("phase"), "pid": pid})
    now = time.monotonic() if now is None else now
    if kind == "worker":
        return _worker(probe, state, now, thresholds)
    return _beat(probe, state, now, thresholds)


def probe_file(kind: str, probe: str, path: str, thresholds: Thresholds) -> Verdict:
    """Read ``path`` and evaluate; a missing or corrupt file is a verdict, not a crash."""
    try:
        state = read_state(path, kind)
    except StateFileError as exc:
        return Verdict(ExitCode.NOT_ALIVE, str(exc), {"file": path})
    verdict = evaluate(kind, probe, state, thresholds)
    return Verdict(verdict.code, verdict.reason, {**verdict.details, "file": path})
