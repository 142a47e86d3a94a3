"""The shipped Prometheus rules and Grafana dashboard only name metrics the kit exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from celery_kit.deadletter._metrics import DeadLetterMetrics
from celery_kit.metrics import TaskMetrics

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METRIC = re.compile(r"\b(celery_[a-z_]+)")


def exported_names() -> set[str]:
    names = set()
    families = [
        *TaskMetrics(CollectorRegistry()).__dict__.values(),
        *DeadLetterMetrics(CollectorRegistry(), "celery").__dict__.values(),
    ]
    for family in families:
        for metric in family.describe():
            names.add(metric.name)
            names.update(
                f"{metric.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count", "_created")
            )
    return names


def test_alert_rules_name_exported_metrics_only() -> None:
    rules = yaml.safe_load((EXAMPLES / "prometheus" / "celery-kit-rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 6
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert used
    assert used <= exported_names(), used - exported_names()


def test_dashboard_names_exported_metrics_only() -> None:
    dashboard = json.loads((EXAMPLES / "grafana" / "celery-kit-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert len(used) >= 8
    assert used <= exported_names(), used - exported_names()
