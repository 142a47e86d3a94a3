"""periodic(): beat entries validated at import time, on the wire exactly as apply_async sends them."""

from __future__ import annotations

import importlib
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
from celery import Celery
from celery.beat import Scheduler
from celery.schedules import crontab, schedule
from pydantic import BaseModel, Field, ValidationError

from celery_kit import ConfigurationError, PayloadTooLargeError, ValidatedTask, validated_task
from celery_kit.presets import periodic as reexported
from celery_kit.schedules import periodic

from .conftest import decoded, published


class Report(BaseModel):
    kind: str
    day_offset: Annotated[int, Field(ge=0)] = 0


@pytest.fixture
def tasks(app: Celery) -> dict[str, ValidatedTask]:
    @validated_task(app, shared=False, name="app.tasks.reports.generate_daily_report")
    def generate(report: Report) -> None: ...

    @validated_task(app, shared=False, name="app.tasks.maintenance.cleanup")
    def cleanup(older_than_days: int, tables: list[str] | None = None) -> None: ...

    @validated_task(app, shared=False, name="app.tasks.ping")
    def ping() -> None: ...

    return {"report": generate, "cleanup": cleanup, "ping": ping}


def _beat_sends(app: Celery, beat_schedule: dict[str, Any], name: str) -> tuple[list[Any], dict[str, Any]]:
    """Let Celery's own beat scheduler publish entry ``name``; return the message's args."""
    app.conf.beat_schedule = beat_schedule
    scheduler = Scheduler(app, lazy=False)
    with app.producer_or_acquire() as producer:
        scheduler.apply_async(scheduler.schedule[name], producer=producer, advance=False)
    [message] = published(app)
    assert message.headers["task"] == beat_schedule[name]["task"]
    args, kwargs, _ = decoded(message)
    return args, kwargs


def test_spec_schedules_daily_report_and_weekly_cleanup(app: Celery, tasks: dict[str, ValidatedTask]) -> None:
    beat_schedule = {
        "daily-report": periodic(tasks["report"], crontab(hour=9, minute=0), Report(kind="daily")),
        "cleanup-old-data": periodic(
            tasks["cleanup"], crontab(hour=2, minute=0, day_of_week=0), {"older_than_days": "30"}
        ),
    }
    daily = beat_schedule["daily-report"]
    assert daily["task"] == "app.tasks.reports.generate_daily_report"
    assert daily["schedule"] == crontab(hour=9, minute=0)
    assert daily["args"] == ({"kind": "daily", "day_offset": 0},)
    assert daily["kwargs"] == {}
    weekly = beat_schedule["cleanup-old-data"]
    assert weekly["schedule"].day_of_week == {0}
    assert weekly["kwargs"] == {"older_than_days": 30}  # coerced and dumped now
    # Beat publishes exactly what apply_async would.
    assert _beat_sends(app, beat_schedule, "daily-report") == ([{"kind": "daily", "day_offset": 0}], {})
    assert _beat_sends(app, beat_schedule, "cleanup-old-data") == ([], {"older_than_days": 30})


def test_entry_matches_apply_async_on_the_wire(app: Celery, tasks: dict[str, ValidatedTask]) -> None:
    cases: list[tuple[ValidatedTask, dict[str, Any]]] = [
        (tasks["report"], {"kind": "weekly", "day_offset": "2"}),
        (tasks["cleanup"], {"older_than_days": 7, "tables": ("a", "b")}),
    ]
    for task, payload in cases:
        entry = periodic(task, 60.0, payload)
        task.apply_async(kwargs=payload)
        args, kwargs, _ = decoded(published(app)[0])
        assert (list(entry["args"]), entry["kwargs"]) == (args, kwargs)


def test_payload_forms(tasks: dict[str, ValidatedTask]) -> None:
    report = tasks["report"]
    by_fields = periodic(report, 10, {"kind": "x"})
    by_model = periodic(report, 10, Report(kind="x"))
    by_tuple = periodic(report, 10, ({"kind": "x"},))
    assert by_fields["args"] == by_model["args"] == by_tuple["args"] == ({"kind": "x", "day_offset": 0},)
    assert periodic(tasks["ping"], timedelta(minutes=5))["args"] == ()
    assert periodic(tasks["cleanup"], 10, (3,))["args"] == (3,)  # positional stays positional


def test_options_and_relative_are_carried(tasks: dict[str, ValidatedTask]) -> None:
    entry = periodic(tasks["ping"], schedule(run_every=30), relative=True, queue="maintenance", expires=25)
    assert entry["options"] == {"queue": "maintenance", "expires": 25}
    assert entry["relative"] is True
    assert "relative" not in periodic(tasks["ping"], 30)


def test_invalid_payload_fails_now_with_pydantics_error_chained(tasks: dict[str, ValidatedTask]) -> None:
    with pytest.raises(
        ConfigurationError, match=r"(?s)'app.tasks.reports.generate_daily_report'.*day_offset"
    ) as caught:
        periodic(tasks["report"], crontab(hour=9, minute=0), {"kind": "daily", "day_offset": -1})
    assert isinstance(caught.value.__cause__, ValidationError)
    with pytest.raises(ConfigurationError, match="older_than_days"):
        periodic(tasks["cleanup"], 60, {"tables": ["a"]})  # required argument missing
    with pytest.raises(ConfigurationError, match="Extra inputs are not permitted"):
        periodic(tasks["ping"], 60, {"extra": 1})


def test_bad_schedule_fails_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kit_bad_schedule.py").write_text(
        "from celery import Celery\n"
        "from celery.schedules import crontab\n"
        "from pydantic import BaseModel\n"
        "from celery_kit import validated_task\n"
        "from celery_kit.presets import periodic\n"
        "app = Celery('bad', set_as_current=False)\n"
        "class Report(BaseModel):\n"
        "    kind: str\n"
        "@validated_task(app, shared=False, name='reports.daily', soft_time_limit=1, time_limit=2)\n"
        "def daily(report: Report) -> None: ...\n"
        "app.conf.beat_schedule = {\n"
        "    'daily-report': periodic(daily, crontab(hour=9, minute=0), {'kinds': 'daily'}),\n"
        "}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigurationError, match=r"(?s)'reports.daily'.*kind"):
            importlib.import_module("kit_bad_schedule")
    finally:
        sys.modules.pop("kit_bad_schedule", None)


def test_task_by_name_with_its_model(tasks: dict[str, ValidatedTask]) -> None:
    entry = reexported("app.tasks.reports.generate_daily_report", 60, {"kind": "daily"}, model=Report)
    assert entry["args"] == periodic(tasks["report"], 60, {"kind": "daily"})["args"]
    assert periodic("app.tasks.ping", 60)["args"] == ()
    with pytest.raises(ConfigurationError, match="kind"):
        periodic("x", 60, {"day_offset": 1}, model=Report)
    with pytest.raises(ConfigurationError, match="needs model="):
        periodic("x", 60, {"kind": "daily"})
    with pytest.raises(ConfigurationError, match="BaseModel subclass"):
        periodic("x", 60, {"kind": "daily"}, model=dict)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="only for tasks given by name"):
        periodic(tasks["report"], 60, {"kind": "daily"}, model=Report)


def test_plain_celery_task_is_refused(app: Celery) -> None:
    @app.task(name="plain", shared=False)  # type: ignore[untyped-decorator]
    def plain(x: int) -> None: ...

    with pytest.raises(ConfigurationError, match="not a validated task"):
        periodic(plain, 60, {"x": 1})


@pytest.mark.parametrize("bad", [0, -5, timedelta(0), float("nan"), "09:00", True])
def test_malformed_schedule_is_refused(tasks: dict[str, ValidatedTask], bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="schedule"):
        periodic(tasks["ping"], bad)


def test_unknown_option_and_non_json_serializer_are_refused(tasks: dict[str, ValidatedTask]) -> None:
    with pytest.raises(ConfigurationError, match="unknown option"):
        periodic(tasks["ping"], 60, queu="typo")
    with pytest.raises(ConfigurationError, match="JSON only"):
        periodic(tasks["ping"], 60, serializer="pickle")


def test_payload_above_the_cap_is_refused(app: Celery) -> None:
    @validated_task(app, shared=False, name="big", max_payload_bytes=64)
    def big(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError):
        periodic(big, 60, {"blob": "x" * 100})
