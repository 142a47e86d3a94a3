"""The performance page is what ``make bench`` wrote from the last recorded run: its tables,
its targets and its method, and the pages that quote it quote that run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmarks.run import TARGETS, cpu_split_table, performance_page, table, targets_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
PAGE = (ROOT / "docs" / "performance.md").read_text()


def test_the_page_is_generated_from_the_recorded_run() -> None:
    # Regenerate it with `python benchmarks/run.py --from-results benchmarks/results/latest.json
    # --docs docs/performance.md` after changing its prose in benchmarks/run.py.
    assert performance_page(RESULTS) == PAGE


def test_the_recorded_run_is_a_full_run_of_every_row() -> None:
    assert RESULTS["quick"] is False
    for name in ("apply_small", "producer_redis", "e2e_redis", "e2e_redis_cpu", "e2e_rabbitmq_cpu"):
        assert name in RESULTS, f"latest.json has no {name} row: run `make bench`"
    for name in ("e2e_redis_cpu", "e2e_rabbitmq_cpu"):
        assert {"plain", "plain_events", "pydantic", "kit", "kit_full"} <= set(RESULTS[name]["median"])


def test_the_page_shows_every_table_and_every_target() -> None:
    for text in (table(RESULTS), targets_table(RESULTS), cpu_split_table(RESULTS)):
        assert text in PAGE
    for name, targets in TARGETS.items():
        for variant, op, goal, baseline in targets:
            assert f"| {name} | {variant} / {baseline} | {op} {goal:.2f} |" in PAGE


def test_the_page_says_how_cpu_per_task_is_sampled_and_what_events_are() -> None:
    for needed in ("/proc/<pid>/stat", "cutime", "celery worker -E", "task_send_sent_event", "-l INFO"):
        assert needed in PAGE, needed


@pytest.mark.parametrize(
    ("measurement", "variants"),
    [
        ("apply_small", ("plain", "pydantic", "kit", "kit_full")),
        ("producer_redis", ("plain", "pydantic", "kit", "kit_full")),
    ],
)
def test_migration_page_quotes_the_recorded_medians(measurement: str, variants: tuple[str, ...]) -> None:
    page = (ROOT / "docs" / "migration.md").read_text()
    for variant in variants:
        shown = f"{RESULTS[measurement]['median'][variant]:,.1f}"
        assert shown in page, f"docs/migration.md does not quote {measurement}/{variant} = {shown}"
        assert shown in PAGE, f"docs/performance.md is not the table of latest.json ({shown})"
