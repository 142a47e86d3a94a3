"""The heartbeat state file: where it lives, how it is written, how it is read.

Standard library only: the probe CLI imports this module, and a probe that imported
Celery would cost half a second of CPU on every run.

The file is replaced atomically (a temporary file in the same directory, then
:func:`os.replace`), so a reader sees either the previous state or the new one, never a
half-written file. Nothing is fsynced: the file describes a live process and is worthless
after a power cut, and an fsync per beat would put disk latency into the worker's loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping

TYPE_CHECKING = False  # not typing's: every import costs the probe CLI
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "BEAT_FILE_ENV",
    "SCHEMA_VERSION",
    "WORKER_FILE_ENV",
    "StateFileError",
    "default_beat_file",
    "default_worker_file",
    "process_start_stamp",
    "process_state",
    "read_state",
    "state_dir",
    "write_state",
]

#: Bumped when a field changes meaning; the reader refuses files of another version.
SCHEMA_VERSION = 1
#: Environment variables naming the state files, read by the worker, beat and the probe,
#: so one setting in a container spec reaches all three.
WORKER_FILE_ENV = "CELERY_KIT_HEALTH_FILE"
BEAT_FILE_ENV = "CELERY_KIT_HEALTH_BEAT_FILE"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@\-]")


class StateFileError(Exception):
    """The state file is missing, unreadable or not a celery_kit health file."""


def state_dir() -> str:
    """``<system temp dir>/celery-kit-health``: per machine (or container), never shared."""
    import tempfile  # only when no path is given: it costs the probe 4 ms

    return os.path.join(tempfile.gettempdir(), "celery-kit-health")


def default_worker_file(nodename: str | None = None) -> str:
    """Where a worker writes its state when no path is configured.

    One file per node name, so several workers on one host do not overwrite each other.
    Without a node name this is Celery's default one, ``celery@<hostname>``, which is what
    the probe assumes when it is given no ``--file``.
    """
    env = os.environ.get(WORKER_FILE_ENV)
    if env:
        return env
    name = nodename or f"celery@{_hostname()}"
    return os.path.join(state_dir(), f"worker-{_UNSAFE.sub('_', name)}.json")


def _hostname() -> str:
    """``socket.gethostname()`` without importing socket (what ``os.uname`` returns on POSIX)."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket

    return socket.gethostname()


def default_beat_file() -> str:
    """Where beat writes its state when no path is configured (one beat per host)."""
    return os.environ.get(BEAT_FILE_ENV) or os.path.join(state_dir(), "beat.json")


def write_state(path: str, state: Mapping[str, Any]) -> None:
    """Write ``state`` as JSON to ``path`` atomically, creating the directory if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    data = json.dumps(state, separators=(",", ":"), default=str).encode()
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".health-", suffix=".tmp", dir=directory)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".health-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a probe may run as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: str, kind: str) -> dict[str, Any]:
    """Read and check a state file written for ``kind`` (``worker`` or ``beat``).

    Raises:
        StateFileError: with a message saying what is wrong and what to do.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise StateFileError(
            f"no state file at {path}: the {kind} has not started yet, or it writes elsewhere "
            f"(pass --file or set {BEAT_FILE_ENV if kind == 'beat' else WORKER_FILE_ENV})"
        ) from None
    except OSError as exc:
        raise StateFileError(f"cannot read state file {path}: {exc}") from None
    try:
        state = json.loads(raw)
    except ValueError:
        raise StateFileError(
            f"state file {path} is not JSON; is --file pointing at the right file?"
        ) from None
    if not isinstance(state, dict) or state.get("v") != SCHEMA_VERSION:
        raise StateFileError(
            f"{path} is not a celery_kit health state file of version {SCHEMA_VERSION}; "
            "is --file pointing at the right file, and do worker and probe run the same celery_kit?"
        )
    return state


def process_start_stamp(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (``/proc/<pid>/stat`` field 22), or ``None``.

    Recorded next to the pid so a probe can tell the worker from an unrelated process
    that got the same pid after the worker died. ``None`` where ``/proc`` does not exist.
    """
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def process_state(pid: int) -> str | None:
    """The one-letter process state (``R``, ``S``, ``T``, ``Z``...) or ``None``."""
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (which may contain spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()
