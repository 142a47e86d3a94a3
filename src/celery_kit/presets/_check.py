"""``check(conf)``: the dangerous setting combinations, each with its fix.

Every one of these is accepted by Celery without a word and bites later: a task run
twice, a worker slot held forever, remote code execution through pickle, a queue
starved behind one busy worker, or tasks that never leave the caller. ``check`` takes
``app.conf`` or any mapping of settings (a preset's result included), returns a typed
list, and logs each warning on the ``celery_kit`` logger.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from celery.app.defaults import DEFAULTS

from .._errors import ConfigurationError
from ._broker import Broker, detect_broker
from ._presets import (
    ETA_HORIZON_SETTING,
    PRESET_SETTING,
    REDIS_DEFAULT_VISIBILITY_TIMEOUT,
    Preset,
    redis_visibility_timeout,
)

__all__ = ["LONG_TASK_SECONDS", "ConfigWarning", "WarningCode", "check"]

logger = logging.getLogger("celery_kit")

#: Above this hard (or soft) limit, in seconds, a task counts as long for the prefetch check.
LONG_TASK_SECONDS = 60.0
_PICKLE = frozenset({"pickle", "application/x-python-serialize"})


class WarningCode(str, Enum):
    """What :func:`check` found; stable strings, safe to match on or silence by."""

    VISIBILITY_TIMEOUT = "redis-visibility-timeout"
    NO_TIME_LIMITS = "no-time-limits"
    SOFT_NOT_BELOW_HARD = "soft-limit-not-below-hard"
    PICKLE_ACCEPTED = "pickle-accepted"
    PREFETCH_LONG_TASKS = "prefetch-with-long-tasks"
    EAGER = "always-eager"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """One dangerous combination: what it is, why it hurts, and the change that fixes it."""

    code: WarningCode
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message} Fix: {self.fix}"


def _get(conf: Mapping[str, Any], key: str) -> Any:
    """The value ``conf`` sets for ``key``, else Celery's default (``app.conf`` has both)."""
    try:
        return conf[key]
    except KeyError:
        return DEFAULTS.get(key)


def _limits(conf: Mapping[str, Any], tasks: Iterable[Any]) -> tuple[float | None, list[str]]:
    """The longest time limit in force, and the tasks running without any limit."""
    soft, hard = _get(conf, "task_soft_time_limit"), _get(conf, "task_time_limit")
    values = [v for v in (soft, hard) if v]
    unlimited: list[str] = []
    for task in tasks:
        task_soft = getattr(task, "soft_time_limit", None) or soft
        task_hard = getattr(task, "time_limit", None) or hard
        if not task_soft and not task_hard:
            unlimited.append(str(getattr(task, "name", task)))
        values.extend(v for v in (task_soft, task_hard) if v)
    return (float(max(values)) if values else None), sorted(set(unlimited))


def _broker(conf: Mapping[str, Any]) -> Broker | None:
    url = _get(conf, "broker_url")
    if not isinstance(url, str):
        return None
    try:
        return detect_broker(url)
    except ConfigurationError:
        return None  # not ours to judge; Celery reports unusable URLs itself


def check(
    conf: Mapping[str, Any], *, tasks: Iterable[Any] | None = None, log: bool = True
) -> list[ConfigWarning]:
    """Return (and log) the dangerous combinations in ``conf``.

    Args:
        conf: ``app.conf`` or a mapping of Celery settings, such as a preset's result.
            Settings it does not contain count at Celery's defaults.
        tasks: the app's tasks (``app.tasks.values()``), so per-task time limits count
            too; optional.
        log: log each warning on the ``celery_kit`` logger (WARNING).

    What it looks for (:class:`WarningCode`): a Redis ``visibility_timeout`` not above
    the longest time limit (with ``task_acks_late``) or the ETA horizon
    (``celery_kit_eta_horizon``); no time limits; soft limit not below the hard one;
    pickle accepted; prefetch above 1 with tasks longer than :data:`LONG_TASK_SECONDS`;
    ``task_always_eager`` outside the ``testing``/``development`` presets.
    """
    # Celery's built-in tasks (celery.*) are not the app's to limit.
    task_list = [task for task in tasks or () if not str(getattr(task, "name", "")).startswith("celery.")]
    warnings: list[ConfigWarning] = []
    longest, unlimited = _limits(conf, task_list)
    acks_late = bool(_get(conf, "task_acks_late")) or any(
        getattr(task, "acks_late", False) is True for task in task_list
    )

    if _broker(conf) is Broker.REDIS:
        options = _get(conf, "broker_transport_options") or {}
        visibility = float(options.get("visibility_timeout") or REDIS_DEFAULT_VISIBILITY_TIMEOUT)
        horizon = float(_get(conf, ETA_HORIZON_SETTING) or 0)
        reasons = []
        if acks_late and longest is not None and visibility <= longest:
            reasons.append(f"the longest time limit ({longest:g} s) with task_acks_late")
        if horizon and visibility <= horizon:
            reasons.append(f"the ETA/countdown horizon ({horizon:g} s, {ETA_HORIZON_SETTING})")
        if reasons:
            warnings.append(
                ConfigWarning(
                    WarningCode.VISIBILITY_TIMEOUT,
                    f"Redis visibility_timeout is {visibility:g} s, not above {' and '.join(reasons)}: "
                    "Redis hands an unacknowledged message to another worker after that time, so "
                    "the task runs twice.",
                    f"set broker_transport_options={{'visibility_timeout': "
                    f"{redis_visibility_timeout(longest, horizon)}}} (above the longest, with margin), "
                    "or build the config with a preset, which computes it.",
                )
            )

    if longest is None:
        warnings.append(
            ConfigWarning(
                WarningCode.NO_TIME_LIMITS,
                "no task_soft_time_limit or task_time_limit: a hung call holds a worker slot forever.",
                "set task_soft_time_limit (cleanup runs) and a higher task_time_limit "
                "(the process is killed), or per-task soft_time_limit/time_limit.",
            )
        )
    elif unlimited:
        warnings.append(
            ConfigWarning(
                WarningCode.NO_TIME_LIMITS,
                f"tasks without any time limit: {', '.join(unlimited)}; a hung call holds a worker "
                "slot forever.",
                "give them soft_time_limit/time_limit, or set task_soft_time_limit/task_time_limit.",
            )
        )

    soft, hard = _get(conf, "task_soft_time_limit"), _get(conf, "task_time_limit")
    if soft and hard and soft >= hard:
        warnings.append(
            ConfigWarning(
                WarningCode.SOFT_NOT_BELOW_HARD,
                f"task_soft_time_limit={soft:g} is not below task_time_limit={hard:g}: the process is "
                "killed before SoftTimeLimitExceeded lets the task clean up.",
                "set task_soft_time_limit below task_time_limit (e.g. 80 % of it).",
            )
        )

    accepted = {*(_get(conf, "accept_content") or ()), *(_get(conf, "result_accept_content") or ())}
    serializers = {_get(conf, "task_serializer"), _get(conf, "result_serializer")}
    if _PICKLE & (accepted | serializers):
        warnings.append(
            ConfigWarning(
                WarningCode.PICKLE_ACCEPTED,
                "pickle is accepted or used as a serializer: anyone who can publish a message "
                "can run arbitrary code on your workers.",
                "set accept_content=['json'], result_accept_content=['json'], "
                "task_serializer='json' and result_serializer='json'.",
            )
        )

    prefetch = _get(conf, "worker_prefetch_multiplier")
    if isinstance(prefetch, int) and prefetch > 1 and longest is not None and longest > LONG_TASK_SECONDS:
        warnings.append(
            ConfigWarning(
                WarningCode.PREFETCH_LONG_TASKS,
                f"worker_prefetch_multiplier={prefetch} with tasks allowed to run {longest:g} s: each "
                "process reserves several messages, which wait behind a long task while other "
                "workers sit idle.",
                "set worker_prefetch_multiplier=1 for long tasks, or route short tasks to their "
                "own queue and worker.",
            )
        )

    if _get(conf, "task_always_eager"):
        preset = _get(conf, PRESET_SETTING)
        if preset not in (Preset.TESTING.value, Preset.DEVELOPMENT.value):
            warnings.append(
                ConfigWarning(
                    WarningCode.EAGER,
                    "task_always_eager is on: tasks run inside the caller, skipping the broker, "
                    "serialisation, routing, time limits and retries.",
                    "turn task_always_eager off; test with a real worker "
                    "(presets.testing() and celery_kit.testing.WorkerProcess).",
                )
            )

    if log:
        for warning in warnings:
            logger.warning("%s", warning, extra={"celery_kit_warning": warning.code.value})
    return warnings
