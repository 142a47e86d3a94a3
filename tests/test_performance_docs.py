"""The comparison page quotes the benchmark numbers of the last recorded run, not made-up ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())


@pytest.mark.parametrize(
    ("measurement", "variants"),
    [
        ("apply_small", ("plain", "pydantic", "kit", "kit_full")),
        ("producer_redis", ("plain", "pydantic", "kit", "kit_full")),
    ],
)
def test_migration_page_quotes_the_recorded_medians(measurement: str, variants: tuple[str, ...]) -> None:
    page = (ROOT / "docs" / "migration.md").read_text()
    performance = (ROOT / "docs" / "performance.md").read_text()
    for variant in variants:
        shown = f"{RESULTS[measurement]['median'][variant]:,.1f}"
        assert shown in page, f"docs/migration.md does not quote {measurement}/{variant} = {shown}"
        assert shown in performance, f"docs/performance.md is not the table of latest.json ({shown})"
