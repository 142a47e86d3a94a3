"""Pytest plugin: write one outcome per test id to a JSON file (``--compat-outcomes=PATH``).

JUnit XML names a test by a dotted class name, which loses the file/class boundary and the
parametrize ids pytest users type; this keeps pytest's own node ids, so an entry in
``deliberate_differences.toml`` is exactly what ``pytest <id>`` runs.

A test's outcome is the worst of its phases (setup, call, teardown, subtests):
``error`` when setup or teardown failed, ``failed`` when the call or a subtest failed,
else ``passed``/``skipped``/``xfailed``/``xpassed``. ``message`` is the first line of the
first failure, for the summary; ``kit_in_traceback`` marks a failure whose report mentions
``celery_kit`` (in the baseline that means merely installing the kit broke plain Celery).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_RANK = {"passed": 0, "xpassed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 3}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--compat-outcomes", metavar="PATH", help="write {node id: outcome} JSON here")


def _phase_outcome(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return report.outcome


def first_line(longrepr: Any) -> str:
    """The crash message's first line (``AssertionError: ...``), else the report's last line."""
    crash = getattr(longrepr, "reprcrash", None)
    text = getattr(crash, "message", None) or str(longrepr)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] if crash is not None else lines[-1]


class _Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: dict[str, dict[str, str]] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = _phase_outcome(report)
        previous = self.outcomes.get(report.nodeid)
        if previous is not None and _RANK[previous["outcome"]] >= _RANK[outcome]:
            return
        entry = {"outcome": outcome}
        if outcome in ("failed", "error"):
            entry["message"] = first_line(report.longrepr)
            if "celery_kit" in str(report.longrepr):
                entry["kit_in_traceback"] = "yes"
        self.outcomes[report.nodeid] = entry

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.outcomes, indent=1, sort_keys=True) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--compat-outcomes")
    if path:
        config.pluginmanager.register(_Recorder(Path(path)), "compat-outcomes-recorder")
