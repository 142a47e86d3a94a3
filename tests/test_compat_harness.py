"""The compatibility job's judgement (compat/), on outcome files written by real pytest runs.

A small suite stands in for Celery's: it runs twice through ``compat.record_outcomes``, once
as the baseline and once with ``FAKE_KIT=1`` (which breaks some of its tests in each way a
test can break), and the comparison must find exactly those.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from compat.compare import (
    HarnessError,
    Outcome,
    compare,
    load_differences,
    load_outcomes,
    migration_sections,
    summary,
)

ROOT = Path(__file__).resolve().parent.parent

SUITE = """
import os

import pytest

KIT = os.environ.get("FAKE_KIT") == "1"


def test_stays():
    pass


def test_regresses():
    assert not KIT, "breaks with the kit"


def test_always_fails():
    assert False, "broken upstream"


def test_fixed():
    assert KIT


@pytest.fixture
def setup_breaks():
    if KIT:
        raise RuntimeError("setup broke")


def test_setup_error(setup_breaks):
    pass


@pytest.fixture
def teardown_breaks():
    yield
    if KIT:
        raise RuntimeError("teardown broke")


def test_teardown_error(teardown_breaks):
    pass


@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert not (KIT and n == 2), f"param {n}"


def test_skipped():
    pytest.skip("not here")


@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False


def test_subtest(subtests):
    with subtests.test("inner"):
        assert not KIT, "subtest broke"


def test_kit_in_plain():
    raise RuntimeError("celery_kit.__getattr__ ran while plain")


if not KIT:

    def test_vanishes():
        pass
"""


def _run(tmp: Path, name: str, *, fake_kit: bool, plugins: tuple[str, ...] = ()) -> Path:
    outcomes = tmp / f"outcomes-{name}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_KIT": "1" if fake_kit else "0"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "compat.record_outcomes"]
    for plugin in plugins:
        command += ["-p", plugin]
    command += [f"--compat-outcomes={outcomes}", "test_suite.py"]
    done = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return outcomes


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Outcome], dict[str, Outcome]]:
    tmp = tmp_path_factory.mktemp("compat-suite")
    (tmp / "pytest.ini").write_text("[pytest]\n")
    (tmp / "test_suite.py").write_text(SUITE)
    baseline = load_outcomes(_run(tmp, "baseline", fake_kit=False))
    kit = load_outcomes(_run(tmp, "kit", fake_kit=True))
    return baseline, kit


def t(name: str) -> str:
    return f"test_suite.py::{name}"


def test_outcomes_are_recorded_per_node_id(runs: tuple[dict[str, Outcome], dict[str, Outcome]]) -> None:
    baseline, kit = runs
    assert baseline[t("test_stays")].outcome == "passed"
    assert baseline[t("test_always_fails")] == Outcome("failed", "AssertionError: broken upstream")
    assert baseline[t("test_skipped")].outcome == "skipped"
    assert baseline[t("test_xfail")].outcome == "xfailed"
    assert baseline[t("test_kit_in_plain")].kit_in_traceback
    assert not baseline[t("test_always_fails")].kit_in_traceback
    assert kit[t("test_setup_error")] == Outcome("error", "RuntimeError: setup broke")
    assert kit[t("test_teardown_error")] == Outcome("error", "RuntimeError: teardown broke")
    assert kit[t("test_param[2]")].outcome == "failed"
    assert kit[t("test_subtest")].outcome == "failed"
    assert t("test_vanishes") not in kit


def test_regressions_are_what_passed_before_and_not_now(
    runs: tuple[dict[str, Outcome], dict[str, Outcome]],
) -> None:
    verdict = compare(*runs)
    assert {r.test: r.outcome for r in verdict.regressions} == {
        t("test_regresses"): "failed",
        t("test_setup_error"): "error",
        t("test_teardown_error"): "error",
        t("test_param[2]"): "failed",
        t("test_subtest"): "failed",
        t("test_vanishes"): "missing",
        t("test_kit_in_plain"): "baseline failed, kit in traceback",
    }
    assert verdict.fixed == [t("test_fixed")]
    assert not verdict.ok
    text = summary(verdict)
    assert "test_suite.py (7)" in text
    assert "test_regresses  [failed] AssertionError: breaks with the kit" in text
    assert text.endswith("compat: FAILED")


def _differences(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "differences.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_listed_regressions_pass_and_stale_entries_fail(
    runs: tuple[dict[str, Outcome], dict[str, Outcome]], tmp_path: Path
) -> None:
    baseline, kit = runs
    regressing = [r.test for r in compare(baseline, kit).regressions]
    listed = ", ".join(f'"{test}"' for test in regressing)
    differences = load_differences(
        _differences(
            tmp_path,
            f"""
            [[difference]]
            tests = [{listed}]
            reason = "the fake kit breaks these on purpose"
            migration = "`Refused` on purpose"
            """,
        )
    )
    sections = migration_sections("# Migrating\n\n#### Refused on *purpose*\n\ntext\n")
    verdict = compare(baseline, kit, differences, sections)
    assert verdict.ok, summary(verdict)
    assert len(verdict.deliberate) == 7
    text = summary(verdict)
    assert f"  {t('test_regresses')}  [failed]" in text
    assert "UNDOCUMENTED" not in text
    assert text.endswith("compat: OK")

    stale = load_differences(
        _differences(
            tmp_path,
            f"""
            [[difference]]
            tests = [{listed}, "{t("test_stays")}", "{t("test_always_fails")}", "{t("gone")}"]
            reason = "the fake kit breaks these on purpose"
            migration = "Refused on purpose"
            """,
        )
    )
    verdict = compare(baseline, kit, stale, sections)
    assert not verdict.ok
    assert dict(verdict.stale).keys() == {t("test_stays"), t("test_always_fails"), t("gone")}
    assert "passes with the kit now" in dict(verdict.stale)[t("test_stays")]


def test_an_entry_must_name_an_existing_migration_section(
    runs: tuple[dict[str, Outcome], dict[str, Outcome]], tmp_path: Path
) -> None:
    differences = load_differences(
        _differences(
            tmp_path,
            f"""
            [[difference]]
            tests = ["{t("test_regresses")}"]
            reason = "argued nowhere"
            migration = "No such section"
            """,
        )
    )
    verdict = compare(*runs, differences, migration_sections("## From plain Celery\n"))
    assert any("no section 'No such section'" in problem for problem in verdict.problems)
    assert not verdict.ok


@pytest.mark.parametrize(
    "body",
    [
        '[[difference]]\ntests = []\nreason = "r"\nmigration = "m"\n',
        '[[difference]]\ntests = ["a"]\nreason = """two\nlines"""\nmigration = "m"\n',
        '[[difference]]\ntests = ["a"]\nreason = "r"\n',
        "not toml =",
    ],
)
def test_a_malformed_list_is_refused(tmp_path: Path, body: str) -> None:
    with pytest.raises(HarnessError):
        load_differences(_differences(tmp_path, body))


def test_the_kit_plugin_makes_validated_task_the_default(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_suite.py").write_text(
        "from celery import Celery\n"
        "from celery_kit import ValidatedTask\n\n"
        "def test_default():\n"
        "    app = Celery('probe', set_as_current=False)\n"
        "    assert issubclass(app.Task, ValidatedTask)\n"
        "    assert not issubclass(Celery('explicit', task_cls='celery.app.task:Task').Task, ValidatedTask)\n"
    )
    outcomes = load_outcomes(_run(tmp_path, "kit", fake_kit=True, plugins=("compat.kit_default_task_cls",)))
    assert outcomes == {t("test_default"): Outcome("passed")}
    plain = load_outcomes(_run(tmp_path, "plain", fake_kit=False))
    assert plain[t("test_default")].outcome == "failed"


def test_the_kit_plugin_refuses_a_kit_from_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_suite.py").write_text("def test_nothing():\n    pass\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMPAT_EXPECT_KIT_FROM": str(tmp_path)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "compat.kit_default_task_cls", "test_suite.py"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR
    assert f"not from {tmp_path}" in done.stderr
