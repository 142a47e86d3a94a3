"""The verdict of the compatibility job: pure functions over two outcome files and the list.

A *regression* is a test that passes in the baseline run (plain Celery) and does not pass
with ``celery_kit:ValidatedTask`` as the default task class: it fails, errors, is skipped, or
was not collected at all (a module that no longer imports hides its tests; that must not read
as "no regressions"). The kit is installed in both runs, as in a user's environment, so a
baseline failure whose traceback goes through ``celery_kit`` is a regression too: installing
the kit changed plain Celery. Every regression must be named in ``deliberate_differences.toml``, and
every name there must still regress, so the list cannot drift from what the kit does.
Each entry points at the docs/migration.md section that argues the difference; a section
that does not exist is an error too.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

#: Outcomes a test can have in an outcome file (see record_outcomes.py), plus ``missing``.
OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
MISSING = "missing"


@dataclass(frozen=True)
class Outcome:
    outcome: str
    message: str = ""
    kit_in_traceback: bool = False


@dataclass(frozen=True)
class Difference:
    """One entry of deliberate_differences.toml."""

    tests: tuple[str, ...]
    reason: str
    migration: str


@dataclass(frozen=True)
class Regression:
    test: str
    outcome: str
    message: str

    @property
    def file(self) -> str:
        return self.test.split("::", 1)[0]


@dataclass
class Verdict:
    baseline_counts: Counter[str]
    kit_counts: Counter[str]
    regressions: list[Regression]
    deliberate: list[Regression]
    stale: list[tuple[str, str]]  # (test id, why it is stale)
    problems: list[str] = field(default_factory=list)  # list/docs errors
    fixed: list[str] = field(default_factory=list)  # fail in the baseline, pass with the kit

    @property
    def ok(self) -> bool:
        return not (self.regressions or self.stale or self.problems)


class HarnessError(Exception):
    """The inputs cannot be judged (missing or malformed file): neither pass nor regression."""


def load_outcomes(path: Path) -> dict[str, Outcome]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read outcomes {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise HarnessError(f"{path}: expected a JSON object of test id -> outcome")
    outcomes = {}
    for test, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("outcome") not in OUTCOMES:
            raise HarnessError(f"{path}: bad entry for {test!r}: {entry!r}")
        outcomes[test] = Outcome(
            entry["outcome"], str(entry.get("message", "")), bool(entry.get("kit_in_traceback"))
        )
    return outcomes


def load_differences(path: Path) -> list[Difference]:
    """Parse the list; every entry needs ``tests``, a one-line ``reason`` and ``migration``."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}") from exc
    entries = raw.get("difference", [])
    if not isinstance(entries, list):
        raise HarnessError(f"{path}: use [[difference]] tables")
    differences = []
    for number, entry in enumerate(entries, 1):
        tests, reason, migration = entry.get("tests"), entry.get("reason"), entry.get("migration")
        where = f"{path}: [[difference]] #{number}"
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise HarnessError(f"{where}: 'tests' must be a non-empty list of pytest node ids")
        if not isinstance(reason, str) or not reason.strip() or "\n" in reason.strip():
            raise HarnessError(f"{where}: 'reason' must be one line")
        if not isinstance(migration, str) or not migration.strip():
            raise HarnessError(f"{where}: 'migration' must name a docs/migration.md section")
        differences.append(Difference(tuple(tests), reason.strip(), migration.strip()))
    return differences


def heading_key(text: str) -> str:
    """A heading as entries name it: code and emphasis marks do not count (`a_b` -> a_b)."""
    return " ".join(re.sub(r"[`*]", "", text).split())


def migration_sections(markdown: str) -> set[str]:
    """Heading texts of a markdown page (``## From plain Celery`` -> ``From plain Celery``)."""
    found = re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", markdown, re.MULTILINE)
    return {heading_key(m.group(1)) for m in found}


def compare(
    baseline: Mapping[str, Outcome],
    kit: Mapping[str, Outcome],
    differences: Iterable[Difference] = (),
    sections: set[str] | None = None,
) -> Verdict:
    """Judge the kit run against the baseline; ``sections`` are docs/migration.md's headings."""
    differences = list(differences)
    all_regressions = []
    fixed = []
    for test in sorted(baseline):
        before = baseline[test]
        after = kit.get(test, Outcome(MISSING, "not collected in the kit run"))
        if before.outcome == "passed" and after.outcome != "passed":
            all_regressions.append(Regression(test, after.outcome, after.message))
        elif before.kit_in_traceback:
            # Installed, not even the default: the kit broke plain Celery (an import side effect).
            all_regressions.append(
                Regression(test, f"baseline {before.outcome}, kit in traceback", before.message)
            )
        elif before.outcome in ("failed", "error") and after.outcome == "passed":
            fixed.append(test)

    listed: dict[str, Difference] = {}
    problems = []
    for difference in differences:
        for test in difference.tests:
            if test in listed:
                problems.append(f"{test} is listed twice in the deliberate differences")
            listed[test] = difference
        if sections is not None and heading_key(difference.migration) not in sections:
            problems.append(
                f"docs/migration.md has no section {difference.migration!r} "
                f"(argues: {difference.reason}); add it or fix the entry"
            )

    regressing = {r.test for r in all_regressions}
    stale = []
    for test in listed:
        if test in regressing:
            continue
        if test not in baseline:
            stale.append((test, "not in the baseline run (renamed or removed upstream?)"))
        elif baseline[test].outcome != "passed":
            stale.append((test, f"{baseline[test].outcome} in the baseline, so not a regression"))
        else:
            stale.append((test, "passes with the kit now: remove the entry (and its migration note?)"))

    return Verdict(
        baseline_counts=Counter(o.outcome for o in baseline.values()),
        kit_counts=Counter(o.outcome for o in kit.values()),
        regressions=[r for r in all_regressions if r.test not in listed],
        deliberate=[r for r in all_regressions if r.test in listed],
        stale=stale,
        problems=problems,
        fixed=fixed,
    )


def _counts(counts: Counter[str]) -> str:
    shown = [f"{counts[o]} {o}" for o in OUTCOMES if counts[o]]
    return f"{sum(counts.values())} tests: " + ", ".join(shown)


def summary(verdict: Verdict, *, width: int = 200) -> str:
    """The text a developer reads: both runs' counts, then what fails the job, by test file."""
    lines = [
        f"baseline (plain Celery):        {_counts(verdict.baseline_counts)}",
        f"kit (task_cls=ValidatedTask):   {_counts(verdict.kit_counts)}",
        f"regressions: {len(verdict.regressions) + len(verdict.deliberate)} "
        f"({len(verdict.deliberate)} deliberate, {len(verdict.regressions)} undocumented)",
    ]
    if verdict.regressions:
        lines += ["", "UNDOCUMENTED REGRESSIONS (pass without the kit, not with it):"]
        by_file: dict[str, list[Regression]] = {}
        for regression in verdict.regressions:
            by_file.setdefault(regression.file, []).append(regression)
        for file, regressions in by_file.items():
            lines.append(f"  {file} ({len(regressions)})")
            for r in regressions:
                name = r.test.split("::", 1)[1] if "::" in r.test else r.test
                detail = f"    {name}  [{r.outcome}] {r.message}"
                lines.append(detail if len(detail) <= width else detail[: width - 3] + "...")
    if verdict.deliberate:
        lines += ["", "deliberate differences (listed, argued in docs/migration.md):"]
        lines += [f"  {r.test}  [{r.outcome}]" for r in verdict.deliberate]
    if verdict.stale:
        lines += ["", "STALE deliberate-difference entries (no longer regressing):"]
        lines += [f"  {test}: {why}" for test, why in verdict.stale]
    if verdict.problems:
        lines += ["", "PROBLEMS with the deliberate-difference list:"]
        lines += [f"  {problem}" for problem in verdict.problems]
    if verdict.fixed:
        lines += ["", f"note: {len(verdict.fixed)} test(s) fail in the baseline but pass with the kit:"]
        lines += [f"  {test}" for test in verdict.fixed]
    lines += ["", "compat: OK" if verdict.ok else "compat: FAILED"]
    return "\n".join(lines)
