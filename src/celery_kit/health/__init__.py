"""Health probes for Celery workers and beat that catch what the usual probes miss.

* A worker heartbeat beating from the consumer's own event loop
  (:class:`~celery_kit.health._step.Heartbeat`, added by :func:`install`), written to a
  JSON state file.
* Probe verdicts (:func:`evaluate`, :class:`ExitCode`) and the command line
  ``python -m celery_kit.health worker|beat live|ready|startup``, which read that file and
  import neither Celery nor your app.
* ``check`` (:func:`check_dependencies`) and :func:`health_check` for dashboards; both
  talk to the broker and are not liveness probes.

Only the standard-library parts are imported eagerly: ``python -m celery_kit.health``
imports this package first, and the probes must stay fast.
"""

from __future__ import annotations

from ._state import StateFileError, default_beat_file, default_worker_file, read_state, write_state
from ._verdict import ExitCode, Thresholds, Verdict, evaluate, probe_file

TYPE_CHECKING = False  # not typing's: the probe must not pay for importing typing
if TYPE_CHECKING:
    from typing import Any

    from ._check import HealthReport, check_dependencies, health_check
    from ._setup import HealthSetup, install
    from ._step import Heartbeat

__all__ = [
    "ExitCode",
    "HealthReport",
    "HealthSetup",
    "Heartbeat",
    "StateFileError",
    "Thresholds",
    "Verdict",
    "check_dependencies",
    "default_beat_file",
    "default_worker_file",
    "evaluate",
    "health_check",
    "install",
    "probe_file",
    "read_state",
    "write_state",
]

_LAZY = {
    "HealthReport": "._check",
    "check_dependencies": "._check",
    "health_check": "._check",
    "HealthSetup": "._setup",
    "install": "._setup",
    "Heartbeat": "._step",
}


def __getattr__(name: str) -> Any:
    """Import the Celery-dependent parts on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
