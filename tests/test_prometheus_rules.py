"""The shipped alert rules, checked and unit-tested by Prometheus' own ``promtool``.

``examples/prometheus/celery-kit-rules.test.yml`` feeds each rule series shaped like a
worker's scrape -- a fresh worker's zeros, a restart's counter reset, a scrape gap, the first
incident -- and says when it must fire and when it must stay quiet.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

RULES = Path(__file__).resolve().parents[1] / "examples" / "prometheus"


def _promtool(promtool: str, *args: str) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_rules_are_valid(promtool: str) -> None:
    _promtool(promtool, "check", "rules", "celery-kit-rules.yml")


def test_rule_unit_tests_pass(promtool: str) -> None:
    _promtool(promtool, "test", "rules", "celery-kit-rules.test.yml")


def test_every_rule_has_cases_that_fire_and_cases_that_do_not() -> None:
    rules = yaml.safe_load((RULES / "celery-kit-rules.yml").read_text())
    tests = yaml.safe_load((RULES / "celery-kit-rules.test.yml").read_text())
    assert tests["rule_files"] == ["celery-kit-rules.yml"]
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert len(alerts) >= 9
    assert alerts - firing == set(), "rules without a case that fires"
    assert alerts - quiet == set(), "rules without a case that stays quiet"
    assert (firing | quiet) <= alerts, "cases of rules that do not exist"
