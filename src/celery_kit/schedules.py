"""Typed beat schedules: ``periodic()`` validates a schedule's payload at import time.

A hand-written ``beat_schedule`` entry carries raw ``args``/``kwargs`` that nobody
checks until beat publishes them -- at 9 a.m., when the report fails on a typo. An entry
built by :func:`periodic` is validated against the task's signature when the module
defining it is imported, so a bad schedule stops the deploy instead::

    from celery.schedules import crontab
    from celery_kit.schedules import periodic

    app.conf.beat_schedule = {
        "daily-report": periodic(generate_daily_report, crontab(hour=9, minute=0), {"kind": "daily"}),
        "cleanup-old-data": periodic(cleanup, crontab(hour=2, minute=0, day_of_week=0), {"days": 30}),
    }

The task is given as the task object (a :class:`~celery_kit.ValidatedTask`), whose
signature is the schema. When the schedule cannot import the task module (a circular
import between the config and the tasks), give the task's name and its payload model
instead: ``periodic("app.tasks.reports.generate", crontab(...), payload, model=Report)``;
the payload then travels as the single JSON object a single-model task receives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeAlias

from celery.schedules import BaseSchedule
from pydantic import BaseModel, ValidationError

from ._errors import ConfigurationError
from ._task import ValidatedTask

__all__ = ["BEAT_OPTIONS", "Schedule", "periodic"]

#: What a beat entry's ``schedule`` may be: a Celery schedule (``crontab``,
#: ``schedule``, ``solar``), a ``timedelta`` or a number of seconds.
Schedule: TypeAlias = BaseSchedule | timedelta | float
#: ``apply_async`` options a beat entry may carry in ``options``.
BEAT_OPTIONS = frozenset(
    {
        "queue",
        "exchange",
        "routing_key",
        "priority",
        "expires",
        "headers",
        "serializer",
        "compression",
        "soft_time_limit",
        "time_limit",
        "ignore_result",
        "retry",
        "retry_policy",
        "shadow",
    }
)


def _check_schedule(schedule: Any, where: str) -> None:
    if isinstance(schedule, BaseSchedule):
        return
    if isinstance(schedule, timedelta):
        seconds = schedule.total_seconds()
    elif isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        seconds = float(schedule)
    else:
        raise ConfigurationError(
            f"{where}: schedule must be a celery.schedules.crontab/schedule/solar, a timedelta "
            f"or a number of seconds, got {schedule!r}."
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigurationError(f"{where}: an interval schedule must be positive, got {schedule!r}.")


def _wire_from_model(
    name: str, model: type[BaseModel], payload: Any, where: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigurationError(f"{where}: model= must be a pydantic BaseModel subclass, got {model!r}.")
    if payload is None:
        raise ConfigurationError(f"{where}: model= is given but no payload; pass the payload to send.")
    value = payload.model_dump() if isinstance(payload, BaseModel) else payload
    return (model.model_validate(value).model_dump(mode="json"),), {}


def periodic(
    task: ValidatedTask | str,
    schedule: Schedule,
    payload: BaseModel | Mapping[str, Any] | tuple[Any, ...] | None = None,
    *,
    model: type[BaseModel] | None = None,
    relative: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Build one ``beat_schedule`` entry, its payload validated and dumped to JSON now.

    Args:
        task: the task object (its signature is the schema), or the task's name
            together with ``model=``.
        schedule: a ``crontab``/``schedule``/``solar``, a ``timedelta`` or seconds.
        payload: the model instance, a mapping of arguments by name (or of the model's
            fields), a tuple of positional arguments, or ``None`` for a task without
            arguments.
        model: with a task name only: the payload model of that single-model task.
        relative: Celery's ``relative`` flag for interval schedules.
        **options: ``apply_async`` options for every run (``queue``, ``expires``,
            ``priority``, ...; see :data:`BEAT_OPTIONS`).

    Returns:
        ``{"task", "schedule", "args", "kwargs", "options"[, "relative"]}``, the entry
        ``beat_schedule`` takes; args and kwargs are exactly what ``apply_async`` sends.

    Raises:
        ConfigurationError: the payload does not fit the task (the pydantic error is
            chained as ``__cause__`` and quoted), the task is not a validated task, the
            schedule or an option is malformed.
        PayloadTooLargeError: the payload is above the task's size cap.
    """
    task_name = task if isinstance(task, str) else str(getattr(task, "name", task))
    where = f"beat schedule for task {task_name!r}"
    _check_schedule(schedule, where)
    unknown = sorted(set(options) - BEAT_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown option(s) {', '.join(unknown)}; beat entries take the "
            f"apply_async options {', '.join(sorted(BEAT_OPTIONS))}."
        )
    serializer = options.get("serializer", "json")
    if serializer != "json":
        raise ConfigurationError(f"{where}: validated payloads travel as JSON only; drop serializer=.")
    try:
        if isinstance(task, str):
            if model is None:
                if payload is not None:
                    raise ConfigurationError(
                        f"{where}: a task given by name needs model= to validate its payload; pass "
                        "the task object, or model=<the task's payload model>."
                    )
                args: tuple[Any, ...] = ()
                kwargs: dict[str, Any] = {}
            else:
                args, kwargs = _wire_from_model(task, model, payload, where)
        else:
            schema = getattr(task, "payload_schema", None)
            if schema is None:
                raise ConfigurationError(
                    f"{where}: {task!r} is not a validated task (no payload schema); register it "
                    "with @validated_task, or write this beat entry by hand."
                )
            if model is not None:
                raise ConfigurationError(f"{where}: model= is only for tasks given by name; drop it.")
            if isinstance(payload, tuple):
                args, kwargs = schema.to_wire(payload, None)
            elif isinstance(payload, BaseModel):
                args, kwargs = schema.to_wire((payload,), None)
            else:
                args, kwargs = schema.to_wire(None, payload)
            schema.check_shape(args, kwargs)
            schema.check_size(args, kwargs, int(getattr(task, "_payload_limit", 0) or 0))
    except ValidationError as exc:
        raise ConfigurationError(
            f"{where}: the payload does not fit the task's signature: {exc}\nFix the payload in "
            "the schedule (it is validated when the schedule is defined, not when beat sends it)."
        ) from exc
    entry: dict[str, Any] = {
        "task": task_name,
        "schedule": schedule,
        "args": tuple(args),
        "kwargs": kwargs,
        "options": dict(options),
    }
    if relative:
        entry["relative"] = True
    return entry
