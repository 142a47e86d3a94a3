"""The preset functions: production-safe Celery settings as plain mappings.

Each preset returns a new ``dict`` of lowercase Celery setting names, usable with
``app.config_from_object(...)`` or ``app.conf.update(...)``. Every value is chosen for a
reason written next to it (and in ``docs/presets.md``); keyword ``**overrides`` are
validated against the settings the installed Celery knows, then win, except
``broker_transport_options``, which is merged key by key so an override does not drop the
computed ``visibility_timeout``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import Enum
from typing import Any

from celery.app.defaults import SETTING_KEYS

from .._errors import ConfigurationError
from .._task import DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_SETTING
from ._broker import Broker, detect_broker, is_sentinel
from ._names import validate_setting_names
from ._routing import QueuesSpec, RateLimits, annotations_for, routing_for

__all__ = [
    "ETA_HORIZON_SETTING",
    "PRESET_SETTING",
    "REDIS_DEFAULT_VISIBILITY_TIMEOUT",
    "Preset",
    "development",
    "low_latency",
    "production",
    "redis_visibility_timeout",
    "reliable",
    "testing",
]

#: ``app.conf`` key recording which preset built the config (read by ``check``).
PRESET_SETTING = "celery_kit_preset"
#: ``app.conf`` key: the longest ETA/countdown, in seconds, the app schedules.
ETA_HORIZON_SETTING = "celery_kit_eta_horizon"
#: What kombu's Redis transport uses when no ``visibility_timeout`` is given.
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600
_VISIBILITY_MARGIN = 1.25
_PICKLE = frozenset({"pickle", "application/x-python-serialize"})


class Preset(str, Enum):
    """The presets by name, as ``KitSettings.preset`` and ``celery_kit_preset`` spell them."""

    PRODUCTION = "production"
    RELIABLE = "reliable"
    LOW_LATENCY = "low_latency"
    DEVELOPMENT = "development"
    TESTING = "testing"


def redis_visibility_timeout(longest_time_limit: float | None, eta_horizon: float) -> int:
    """The Redis ``visibility_timeout`` a preset sets, in whole seconds.

    Redis has no real acknowledgements: a message a worker took but has not acknowledged
    is handed to another worker once ``visibility_timeout`` has passed. With
    ``task_acks_late`` that is every running task, and with ETA/countdown every task
    waiting for its time, so the timeout must exceed both the longest time limit and the
    ETA horizon, or the task runs twice. The result is 25 % above the longer of the two,
    and never below kombu's own default of one hour.
    """
    needed = max(longest_time_limit or 0.0, eta_horizon)
    return max(REDIS_DEFAULT_VISIBILITY_TIMEOUT, math.ceil(needed * _VISIBILITY_MARGIN))


def _known(settings: dict[str, Any], **values: Any) -> None:
    """Set only the settings the installed Celery defines (e.g. soft shutdown is 5.5+)."""
    settings.update({key: value for key, value in values.items() if key in SETTING_KEYS})


def _positive(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {value!r}.")


def _check_limits(soft: Any, hard: Any, source: str) -> None:
    _positive(f"soft time limit ({source})", soft)
    _positive(f"hard time limit ({source})", hard)
    if soft is not None and hard is not None and soft >= hard:
        raise ConfigurationError(
            f"soft time limit {soft} must be below the hard time limit {hard} ({source}): the soft "
            "limit raises SoftTimeLimitExceeded so cleanup can run, the hard limit kills the "
            "process. Lower the soft limit or raise the hard one."
        )


def _refuse_pickle(settings: Mapping[str, Any]) -> None:
    for key in ("task_serializer", "result_serializer", "event_serializer"):
        if settings.get(key) in _PICKLE:
            raise ConfigurationError(
                f"presets are JSON-only and refuse {key}={settings[key]!r}: pickle lets anyone who "
                "can publish a message run code on your workers. Send JSON data (ids, not objects)."
            )
    for key in ("accept_content", "result_accept_content"):
        if _PICKLE.intersection(settings.get(key) or ()):
            raise ConfigurationError(
                f"presets are JSON-only and refuse {key}={list(settings[key])!r}: accepting "
                "pickle lets anyone who can publish a message run code on your workers. "
                "Keep ['json']."
            )


def _build(
    preset: Preset,
    broker_url: str,
    result_backend: str | None,
    *,
    queues: QueuesSpec | None,
    route_prefix: str,
    default_queue: str,
    rate_limits: RateLimits | None,
    soft_time_limit: float | None,
    time_limit: float | None,
    eta_horizon: float,
    max_payload_bytes: int,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    broker = detect_broker(broker_url)
    validate_setting_names(overrides)
    _check_limits(soft_time_limit, time_limit, "soft_time_limit/time_limit")
    if isinstance(eta_horizon, bool) or not isinstance(eta_horizon, (int, float)) or eta_horizon < 0:
        raise ConfigurationError(
            f"eta_horizon must be the longest ETA/countdown you schedule, in seconds (>= 0), "
            f"got {eta_horizon!r}."
        )
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 0:
        raise ConfigurationError(
            f"max_payload_bytes must be a whole number of bytes >= 0 (0 disables the cap), "
            f"got {max_payload_bytes!r}."
        )
    quorum = (
        preset is Preset.RELIABLE and broker is Broker.RABBITMQ and "task_default_queue_type" in SETTING_KEYS
    )

    settings: dict[str, Any] = {
        "broker_url": broker_url,
        # JSON only: pickle lets anyone who can publish run code on every worker, and
        # JSON keeps messages readable by Flower, other languages and humans.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # One clock for ETAs, crontabs and logs, whatever the hosts' local time is.
        "timezone": "UTC",
        "enable_utc": True,
        # A worker that starts before its broker retries instead of exiting
        # (Celery 6 will stop retrying at startup unless told to).
        "broker_connection_retry_on_startup": True,
        # Eager mode runs tasks in the caller, skipping serialisation, routing and the
        # worker: nothing a preset configures would be exercised. Never on.
        "task_always_eager": False,
        # Celery's consumer, except that a broker connection lost mid-load does not stop
        # the worker (Celery 5.7 + Redis: "Unrecoverable error: AttributeError"); see
        # celery_kit.consumer.
        "worker_consumer": "celery_kit.consumer:Consumer",
        "task_soft_time_limit": soft_time_limit,
        "task_time_limit": time_limit,
        MAX_PAYLOAD_SETTING: max_payload_bytes,
        PRESET_SETTING: preset.value,
        ETA_HORIZON_SETTING: eta_horizon,
    }
    if result_backend is not None:
        settings["result_backend"] = result_backend
        # Retry a result write on a recoverable backend error instead of failing a task
        # that already did its work.
        settings["result_backend_always_retry"] = True
        settings["result_backend_max_retries"] = 10

    if preset in (Preset.PRODUCTION, Preset.RELIABLE, Preset.LOW_LATENCY):
        settings.update(
            # Results are kept one day (an hour for low_latency), then expire: a result
            # backend is not a database.
            result_expires=3600 if preset is Preset.LOW_LATENCY else 86400,
            # Flower and the event stream: task-sent and task-started states.
            worker_send_task_events=True,
            task_send_sent_event=preset is not Preset.LOW_LATENCY,
            task_track_started=preset is not Preset.LOW_LATENCY,
            # One reserved message per process for tasks of minutes; short tasks
            # (low_latency) save broker round trips by reserving a few.
            worker_prefetch_multiplier=4 if preset is Preset.LOW_LATENCY else 1,
            # Replace pool processes periodically, so leaks in task code or libraries
            # cannot grow without bound (memory cap in KiB, checked after each task).
            worker_max_tasks_per_child=10000 if preset is Preset.LOW_LATENCY else 1000,
            worker_max_memory_per_child=512_000,
            task_acks_late=False,
        )
        # Celery >= 5.5: on a cold shutdown (SIGQUIT, or SIGTERM with
        # REMAP_SIGTERM=SIGQUIT) give running tasks 15 s to finish before they are
        # cancelled and requeued. On Redis, also when idle, so ETA tasks the worker holds
        # are restored to the queue.
        _known(settings, worker_soft_shutdown_timeout=15.0)
        if broker is Broker.REDIS:
            _known(settings, worker_enable_soft_shutdown_on_idle=True)
        # Dead letters (issue 17): every message the kit gives up on is kept on the
        # broker, inspectable and replayable (celery_kit.deadletter).
        on_broker = broker in (Broker.REDIS, Broker.RABBITMQ) and not is_sentinel(broker_url)
        if preset is not Preset.LOW_LATENCY and on_broker:
            settings["celery_kit_dead_letters"] = True
    if preset is Preset.RELIABLE:
        settings.update(
            # Acknowledge after the task finished, so a crash mid-task redelivers it;
            # tasks must be idempotent.
            task_acks_late=True,
            # A pool process killed mid-task (OOM, SIGKILL) requeues the message instead
            # of marking the task failed.
            task_reject_on_worker_lost=True,
            # With late acks, prefetched messages wait behind a running task; reserve one.
            worker_prefetch_multiplier=1,
            # On a lost broker connection the broker redelivers unacknowledged messages;
            # cancel those tasks instead of running them twice.
            worker_cancel_long_running_tasks_on_connection_loss=True,
        )
    elif preset is Preset.DEVELOPMENT:
        settings.update(
            result_expires=3600,
            worker_send_task_events=True,
            task_send_sent_event=True,
            task_track_started=True,
            worker_prefetch_multiplier=1,
            task_acks_late=False,
            # Readable logs for a terminal: short time, level, process, task name and id.
            worker_log_format="%(asctime)s %(levelname)-7s [%(processName)s] %(message)s",
            worker_task_log_format=(
                "%(asctime)s %(levelname)-7s [%(processName)s] %(task_name)s[%(task_id)s] %(message)s"
            ),
            worker_log_color=True,
            # print() in a task shows up at INFO, not as a WARNING.
            worker_redirect_stdouts_level="INFO",
        )
    elif preset is Preset.TESTING:
        settings.update(
            # A test must fail, not hang, when its broker is down.
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=5,
            result_expires=600,
            worker_send_task_events=False,
            task_send_sent_event=False,
            task_track_started=True,
            worker_prefetch_multiplier=1,
            task_acks_late=False,
        )
        _known(settings, worker_soft_shutdown_timeout=0.0)

    transport: dict[str, Any] = {}
    if broker is Broker.FILESYSTEM and preset is not Preset.PRODUCTION and preset is not Preset.RELIABLE:
        # The filesystem transport polls its folder: poll often where latency matters.
        transport["polling_interval"] = 0.1
    if quorum:
        # Quorum queues: replicated, durable, and the type RabbitMQ 4 recommends; the
        # worker detects them and switches to per-consumer QoS (global QoS is refused).
        settings["task_default_queue_type"] = "quorum"
        _known(settings, task_create_missing_queue_type="quorum", worker_detect_quorum_queues=True)
        # ETA/countdown on quorum queues goes through native delayed delivery, which
        # cannot route through direct exchanges.
        settings["task_default_exchange_type"] = "topic"
        # Publisher confirms: apply_async returns once RabbitMQ has the message.
        transport["confirm_publish"] = True
    settings["broker_transport_options"] = transport

    settings.update(
        routing_for(queues, route_prefix=route_prefix, default_queue=default_queue, quorum=quorum)
    )
    settings.update(annotations_for(rate_limits))

    for key, value in overrides.items():
        if key == "broker_transport_options" and isinstance(value, Mapping):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value

    _refuse_pickle(settings)
    _check_limits(settings.get("task_soft_time_limit"), settings.get("task_time_limit"), "after overrides")
    options = settings["broker_transport_options"]
    if broker is Broker.REDIS:
        if "visibility_timeout" not in options:
            longest = settings.get("task_time_limit") or settings.get("task_soft_time_limit")
            options["visibility_timeout"] = redis_visibility_timeout(
                longest, float(settings.get(ETA_HORIZON_SETTING) or 0)
            )
        if is_sentinel(broker_url) and not options.get("master_name"):
            raise ConfigurationError(
                "a sentinel:// broker needs the Redis master's name: pass "
                "broker_transport_options={'master_name': 'mymaster'}."
            )
    if not options:
        del settings["broker_transport_options"]
    return settings


def production(
    broker_url: str,
    result_backend: str | None = None,
    *,
    queues: QueuesSpec | None = None,
    route_prefix: str = "",
    default_queue: str = "celery",
    rate_limits: RateLimits | None = None,
    soft_time_limit: float | None = 300.0,
    time_limit: float | None = 360.0,
    eta_horizon: float = 3600.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """Safe defaults for a service in production: JSON only, UTC, time limits, Flower events.

    Args:
        broker_url: the broker; its scheme picks the broker-specific options.
        result_backend: the result backend URL, or ``None`` for no results.
        queues: queue names (routed by ``f"{route_prefix}{name}.*"``), or a mapping of
            queue name to task-name pattern(s). Builds ``task_queues`` and ``task_routes``.
        route_prefix: prefix of the task-name patterns built from queue names, e.g.
            ``"app.tasks."`` to route ``app.tasks.email.*`` to ``email``.
        default_queue: where unrouted tasks go (``task_default_queue``).
        rate_limits: ``"100/m"`` for every task, or ``{task_name_or_"*": rate}``.
        soft_time_limit: default soft limit in seconds (cleanup runs); ``None`` for none.
        time_limit: default hard limit in seconds (the process is killed); above the soft one.
        eta_horizon: the longest ETA/countdown, in seconds, the app schedules; the Redis
            ``visibility_timeout`` is computed to exceed it.
        max_payload_bytes: the payload size cap (``celery_kit_max_payload_bytes``).
        **overrides: any Celery setting (lowercase name) or ``celery_kit_*`` setting.

    Raises:
        ConfigurationError: unknown broker scheme or setting name, soft limit not below
            the hard limit, pickle asked for, or a malformed queue or rate limit.
    """
    return _build(
        Preset.PRODUCTION,
        broker_url,
        result_backend,
        queues=queues,
        route_prefix=route_prefix,
        default_queue=default_queue,
        rate_limits=rate_limits,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        eta_horizon=eta_horizon,
        max_payload_bytes=max_payload_bytes,
        overrides=overrides,
    )


def reliable(
    broker_url: str,
    result_backend: str | None = None,
    *,
    queues: QueuesSpec | None = None,
    route_prefix: str = "",
    default_queue: str = "celery",
    rate_limits: RateLimits | None = None,
    soft_time_limit: float | None = 300.0,
    time_limit: float | None = 360.0,
    eta_horizon: float = 3600.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """:func:`production` plus at-least-once delivery: a task lost with its worker runs again.

    Late acknowledgement, requeue on a lost worker, one reserved message per process.
    On Redis, a ``visibility_timeout`` above the longest time limit and ETA horizon; on
    RabbitMQ, quorum queues and publisher confirms. Tasks must be idempotent. Arguments
    are :func:`production`'s.

    On RabbitMQ no acknowledged task is lost with a worker. On Redis one message can be:
    kombu takes a message with ``BRPOP`` and records it as unacknowledged in a second
    command, so a message the worker's main process popped just before it was killed (or
    the server died) is gone -- at most one per kill or outage, never a started task. For
    zero loss, use RabbitMQ with quorum queues (what this preset sets up there).
    """
    return _build(
        Preset.RELIABLE,
        broker_url,
        result_backend,
        queues=queues,
        route_prefix=route_prefix,
        default_queue=default_queue,
        rate_limits=rate_limits,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        eta_horizon=eta_horizon,
        max_payload_bytes=max_payload_bytes,
        overrides=overrides,
    )


def low_latency(
    broker_url: str,
    result_backend: str | None = None,
    *,
    queues: QueuesSpec | None = None,
    route_prefix: str = "",
    default_queue: str = "celery",
    rate_limits: RateLimits | None = None,
    soft_time_limit: float | None = 10.0,
    time_limit: float | None = 30.0,
    eta_horizon: float = 3600.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """For many short tasks: fewer broker round trips and backend writes per task.

    Prefetches 4 messages per process, skips the task-sent event and the STARTED state,
    keeps results an hour, and defaults to short time limits (10 s soft, 30 s hard).
    Arguments are :func:`production`'s.
    """
    return _build(
        Preset.LOW_LATENCY,
        broker_url,
        result_backend,
        queues=queues,
        route_prefix=route_prefix,
        default_queue=default_queue,
        rate_limits=rate_limits,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        eta_horizon=eta_horizon,
        max_payload_bytes=max_payload_bytes,
        overrides=overrides,
    )


def development(
    broker_url: str,
    result_backend: str | None = None,
    *,
    queues: QueuesSpec | None = None,
    route_prefix: str = "",
    default_queue: str = "celery",
    rate_limits: RateLimits | None = None,
    soft_time_limit: float | None = 300.0,
    time_limit: float | None = 360.0,
    eta_horizon: float = 3600.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """For a laptop: production's serialisation and limits, readable coloured logs, no late acks.

    Same JSON-only rules and time limits as production, so what works here works there;
    events on for a local Flower. Arguments are :func:`production`'s.
    """
    return _build(
        Preset.DEVELOPMENT,
        broker_url,
        result_backend,
        queues=queues,
        route_prefix=route_prefix,
        default_queue=default_queue,
        rate_limits=rate_limits,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        eta_horizon=eta_horizon,
        max_payload_bytes=max_payload_bytes,
        overrides=overrides,
    )


def testing(
    broker_url: str,
    result_backend: str | None = None,
    *,
    queues: QueuesSpec | None = None,
    route_prefix: str = "",
    default_queue: str = "celery",
    rate_limits: RateLimits | None = None,
    soft_time_limit: float | None = 30.0,
    time_limit: float | None = 60.0,
    eta_horizon: float = 3600.0,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    **overrides: Any,
) -> dict[str, Any]:
    """For tests with a real worker and broker (not eager): fail fast, no events, quick stops.

    The broker connection is not retried at startup (a test fails instead of hanging),
    task events are off, soft shutdown is off, and limits are 30 s / 60 s so a stuck test
    task ends. Arguments are :func:`production`'s.
    """
    return _build(
        Preset.TESTING,
        broker_url,
        result_backend,
        queues=queues,
        route_prefix=route_prefix,
        default_queue=default_queue,
        rate_limits=rate_limits,
        soft_time_limit=soft_time_limit,
        time_limit=time_limit,
        eta_horizon=eta_horizon,
        max_payload_bytes=max_payload_bytes,
        overrides=overrides,
    )


# A function named ``testing`` imported into a test module would otherwise be collected by pytest.
testing.__test__ = False  # type: ignore[attr-defined]
