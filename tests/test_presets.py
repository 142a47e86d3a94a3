"""Presets: what each sets and why it matters, broker awareness, routing, validation, check()."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from celery.app.defaults import SETTING_KEYS

from celery_kit import ConfigurationError, validated_task
from celery_kit.presets import (
    PRESETS,
    ConfigWarning,
    Preset,
    WarningCode,
    check,
    detect_broker,
    development,
    low_latency,
    production,
    redis_visibility_timeout,
    reliable,
)
from celery_kit.presets import Broker as B

from .conftest import published

REDIS = "redis://localhost:6379/0"
AMQP = "amqp://guest:guest@localhost:5672//"
ALL = list(PRESETS.items())
Build = Callable[..., dict[str, Any]]


def _loaded(config: dict[str, Any]) -> Celery:
    app = Celery("presets-test", set_as_current=False)
    app.config_from_object(config)
    return app


# -- every preset ---------------------------------------------------------------------------


@pytest.mark.parametrize(("preset", "build"), ALL, ids=[p.value for p, _ in ALL])
@pytest.mark.parametrize("url", [REDIS, AMQP, "memory://", "filesystem://"])
def test_every_preset_is_json_only_utc_limited_and_loads_into_an_app(
    preset: Preset, build: Build, url: str
) -> None:
    config = build(url, "redis://localhost:6379/1")
    app = _loaded(config)
    conf = app.conf
    assert conf.broker_url == url
    assert conf.result_backend == "redis://localhost:6379/1"
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == conf.result_accept_content == ["json"]
    assert conf.timezone == "UTC"
    assert conf.enable_utc is True
    assert conf.task_always_eager is False
    assert 0 < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.celery_kit_preset == preset.value
    assert conf.celery_kit_max_payload_bytes == 256 * 1024
    assert set(config) - SETTING_KEYS <= {
        "celery_kit_preset",
        "celery_kit_eta_horizon",
        "celery_kit_max_payload_bytes",
        "celery_kit_dead_letters",
    }
    assert check(conf) == []  # every preset passes its own check


def test_each_call_returns_a_new_mapping() -> None:
    first = production(REDIS, queues=["a"])
    first["broker_transport_options"]["visibility_timeout"] = 1
    second = production(REDIS, queues=["a"])
    assert second["broker_transport_options"]["visibility_timeout"] > 1
    assert first["task_queues"][0] is not second["task_queues"][0]


def test_production_settings() -> None:
    config = production(REDIS, soft_time_limit=50, time_limit=60)
    assert config["broker_connection_retry_on_startup"] is True
    assert (config["task_soft_time_limit"], config["task_time_limit"]) == (50, 60)
    assert config["result_expires"] == 86400
    assert config["task_track_started"] is True
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is True
    assert config["worker_max_tasks_per_child"] == 1000
    assert config["worker_max_memory_per_child"] == 512_000
    assert config["worker_prefetch_multiplier"] == 1
    assert config["task_acks_late"] is False
    assert "result_backend" not in config  # no backend given: none configured


def test_soft_shutdown_is_set_where_celery_knows_it() -> None:
    assert {"worker_soft_shutdown_timeout", "worker_enable_soft_shutdown_on_idle"} <= SETTING_KEYS
    assert production(REDIS)["worker_soft_shutdown_timeout"] == 15.0
    # Restoring held ETA tasks on an idle shutdown is a Redis concern only.
    assert production(REDIS)["worker_enable_soft_shutdown_on_idle"] is True
    assert "worker_enable_soft_shutdown_on_idle" not in production(AMQP)
    assert presets_testing(REDIS)["worker_soft_shutdown_timeout"] == 0.0


def presets_testing(url: str, **kwargs: Any) -> dict[str, Any]:
    return PRESETS[Preset.TESTING](url, **kwargs)


def test_reliable_on_redis_acks_late_with_a_visibility_timeout_above_limits_and_eta() -> None:
    config = reliable(REDIS, soft_time_limit=3000, time_limit=5000, eta_horizon=7200)
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    visibility = config["broker_transport_options"]["visibility_timeout"]
    assert visibility == redis_visibility_timeout(5000, 7200) == 9000
    assert visibility > 7200
    assert "task_default_queue_type" not in config  # quorum queues are RabbitMQ's


def test_visibility_timeout_follows_the_hard_limit_when_it_is_longest() -> None:
    config = reliable(REDIS, soft_time_limit=9000, time_limit=10000, eta_horizon=60)
    assert config["broker_transport_options"]["visibility_timeout"] == 12500
    # ...and never goes below kombu's own default of an hour.
    assert redis_visibility_timeout(10, 0) == 3600


def test_reliable_on_rabbitmq_uses_quorum_queues_and_publisher_confirms() -> None:
    config = reliable(AMQP, queues=["email"])
    assert config["task_default_queue_type"] == "quorum"
    if "task_create_missing_queue_type" in SETTING_KEYS:  # Celery >= 5.6
        assert config["task_create_missing_queue_type"] == "quorum"
    assert config["task_default_exchange_type"] == "topic"
    assert config["worker_detect_quorum_queues"] is True
    assert config["broker_transport_options"] == {"confirm_publish": True}
    for queue in config["task_queues"]:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"
        assert queue.durable is True
    # Celery builds its default queue as quorum too.
    app = _loaded(reliable(AMQP))
    assert app.amqp.queues["celery"].queue_arguments == {"x-queue-type": "quorum"}


@pytest.mark.parametrize("build", [production, low_latency, development])
def test_no_redis_or_quorum_options_on_other_brokers(build: Build) -> None:
    config = build(AMQP)
    assert "broker_transport_options" not in config
    assert "task_default_queue_type" not in config
    assert "visibility_timeout" not in reliable("memory://").get("broker_transport_options", {})


def test_filesystem_polls_quickly_where_latency_matters() -> None:
    assert development("filesystem://")["broker_transport_options"] == {"polling_interval": 0.1}
    assert "broker_transport_options" not in production("filesystem://")
    assert "broker_transport_options" not in development(REDIS.replace("redis", "amqp"))


def test_low_latency_development_and_testing_differences() -> None:
    fast = low_latency(REDIS)
    assert fast["worker_prefetch_multiplier"] == 4
    assert fast["task_track_started"] is False
    assert fast["task_send_sent_event"] is False
    assert (fast["task_soft_time_limit"], fast["task_time_limit"]) == (10.0, 30.0)
    dev = development(REDIS)
    assert dev["task_acks_late"] is False
    assert "%(task_name)s[%(task_id)s]" in dev["worker_task_log_format"]
    assert dev["worker_redirect_stdouts_level"] == "INFO"
    test = presets_testing(REDIS)
    assert test["task_always_eager"] is False
    assert test["broker_connection_retry_on_startup"] is False
    assert test["worker_send_task_events"] is False


def test_testing_preset_is_not_collected_by_pytest() -> None:
    assert PRESETS[Preset.TESTING].__test__ is False  # type: ignore[attr-defined]


# -- broker detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "broker"),
    [
        ("redis://h:6379/0", B.REDIS),
        ("rediss://:pw@h:6380/0", B.REDIS),
        ("sentinel://h:26379;sentinel://h2:26379", B.REDIS),
        ("amqp://u:p@h//", B.RABBITMQ),
        ("amqps://h//", B.RABBITMQ),
        ("pyamqp://h//", B.RABBITMQ),
        ("filesystem://", B.FILESYSTEM),
        ("memory://", B.MEMORY),
        ("REDIS://h", B.REDIS),
    ],
)
def test_broker_detected_from_the_scheme(url: str, broker: B) -> None:
    assert detect_broker(url) is broker


@pytest.mark.parametrize("url", ["sqs://", "localhost:6379", "kafka://h:9092"])
def test_unknown_broker_scheme_names_the_fix(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"amqp.*redis"):
        production(url)


def test_empty_broker_url_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="non-empty URL"):
        production("  ")


def test_mixed_failover_urls_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="one kind of broker"):
        detect_broker("redis://a;amqp://b//")


def test_sentinel_needs_a_master_name() -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        production("sentinel://h:26379")
    config = production("sentinel://h:26379", broker_transport_options={"master_name": "mymaster"})
    assert config["broker_transport_options"]["master_name"] == "mymaster"
    assert config["broker_transport_options"]["visibility_timeout"] >= 3600


# -- overrides and validation ---------------------------------------------------------------------


def test_overrides_win_and_transport_options_merge() -> None:
    config = reliable(
        REDIS,
        result_expires=60,
        celery_kit_custom=1,
        broker_transport_options={"queue_order_strategy": "priority"},
    )
    assert config["result_expires"] == 60
    assert config["celery_kit_custom"] == 1
    options = config["broker_transport_options"]
    assert options["queue_order_strategy"] == "priority"
    assert options["visibility_timeout"] == redis_visibility_timeout(360, 3600)


def test_an_explicit_visibility_timeout_is_kept() -> None:
    config = reliable(REDIS, broker_transport_options={"visibility_timeout": 99})
    assert config["broker_transport_options"]["visibility_timeout"] == 99
    [warning] = check(config, log=False)  # ...and check() says what it costs
    assert warning.code is WarningCode.VISIBILITY_TIMEOUT


def test_overridden_time_limits_drive_the_visibility_timeout() -> None:
    config = reliable(REDIS, task_time_limit=20000, eta_horizon=0)
    assert config["broker_transport_options"]["visibility_timeout"] == 25000


def test_unknown_setting_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigurationError, match=r"'task_acks_lates'.*did you mean 'task_acks_late'"):
        production(REDIS, task_acks_lates=True)


def test_old_style_setting_names_point_to_the_new_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"CELERY_ACKS_LATE.*'task_acks_late'"):
        production(REDIS, CELERY_ACKS_LATE=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"soft_time_limit": 60, "time_limit": 60},
        {"soft_time_limit": 90, "time_limit": 60},
        {"task_soft_time_limit": 400},
        {"soft_time_limit": -1},
        {"time_limit": 0},
    ],
)
def test_soft_limit_must_be_positive_and_below_the_hard_limit(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="time limit"):
        production(REDIS, **kwargs)


def test_limits_may_be_turned_off_and_check_then_warns() -> None:
    config = production(REDIS, soft_time_limit=None, time_limit=None)
    assert config["task_time_limit"] is None
    assert [w.code for w in check(config, log=False)] == [WarningCode.NO_TIME_LIMITS]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"accept_content": ["json", "pickle"]},
        {"task_serializer": "pickle"},
        {"result_accept_content": ["application/x-python-serialize"]},
    ],
)
def test_presets_refuse_pickle(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="JSON-only"):
        reliable(REDIS, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eta_horizon": -1}, "eta_horizon"),
        ({"max_payload_bytes": -5}, "max_payload_bytes"),
        ({"default_queue": ""}, "default_queue"),
    ],
)
def test_bad_arguments_name_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        production(REDIS, **kwargs)


# -- routing and rate limits ----------------------------------------------------------------------


def test_queue_names_build_queues_and_prefix_routes_that_celery_follows() -> None:
    config = production(REDIS, queues=["email", "reports"], route_prefix="app.tasks.")
    assert [q.name for q in config["task_queues"]] == ["celery", "email", "reports"]
    assert config["task_routes"] == {
        "app.tasks.email.*": {"queue": "email"},
        "app.tasks.reports.*": {"queue": "reports"},
    }
    router = _loaded(config).amqp.router
    assert router.route({}, "app.tasks.email.send")["queue"].name == "email"
    assert router.route({}, "app.tasks.reports.daily")["queue"].name == "reports"
    assert router.route({}, "app.tasks.other.x")["queue"].name == "celery"


def test_queue_mapping_takes_explicit_patterns() -> None:
    config = production(
        REDIS, queues={"email": ["mail.*", "legacy.send_mail"], "bulk": "bulk.*"}, default_queue="default"
    )
    assert config["task_default_queue"] == "default"
    assert [q.name for q in config["task_queues"]] == ["default", "email", "bulk"]
    assert config["task_routes"]["legacy.send_mail"] == {"queue": "email"}


def test_routed_task_is_published_to_its_queue(app: Celery, unique: str) -> None:
    queue = f"email-{unique}"
    app.conf.update(
        production("memory://", queues={queue: "mail.*"}, default_queue=app.conf.task_default_queue)
    )

    @validated_task(app, shared=False, name="mail.send")
    def send(to: str) -> None: ...

    @validated_task(app, shared=False, name="other.task")
    def other(n: int) -> None: ...

    send.delay(to="a@example.com")
    other.delay(n=1)
    [message] = published(app)  # the default queue holds only the unrouted task
    assert message.headers["task"] == "other.task"
    with app.connection_for_read() as conn:
        routed = conn.SimpleQueue(queue, no_ack=True)
        assert routed.get(timeout=1).headers["task"] == "mail.send"
        routed.close()


@pytest.mark.parametrize(
    ("queues", "match"),
    [
        ("email", "list of queue names"),
        (["a", "a"], "twice"),
        ({"a": "x.*", "b": "x.*"}, "both"),
        ({"a": []}, "no task-name pattern"),
        ([" a"], "without spaces"),
    ],
)
def test_malformed_queues_are_refused(queues: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        production(REDIS, queues=queues)


def test_rate_limits_become_task_annotations_that_celery_applies() -> None:
    config = production(REDIS, rate_limits={"*": "100/m", "app.slow": "2/h"})
    assert config["task_annotations"] == {"*": {"rate_limit": "100/m"}, "app.slow": {"rate_limit": "2/h"}}
    app = _loaded(production(REDIS, rate_limits="100/m"))

    @app.task(name="app.any", shared=False)  # type: ignore[untyped-decorator]
    def any_task() -> None: ...

    assert app.tasks["app.any"].rate_limit == "100/m"


@pytest.mark.parametrize(
    ("limits", "match"),
    [("100/minute", "not a Celery rate"), ({"app.*": "1/s"}, "exact task name"), ("fast", "rate")],
)
def test_malformed_rate_limits_are_refused(limits: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        production(REDIS, rate_limits=limits)


# -- check() -------------------------------------------------------------------------------------------


def _codes(warnings: list[ConfigWarning]) -> list[WarningCode]:
    return [w.code for w in warnings]


SAFE: dict[str, Any] = {
    "broker_url": REDIS,
    "task_soft_time_limit": 30,
    "task_time_limit": 40,
    "worker_prefetch_multiplier": 1,
}


def test_clean_config_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_kit"):
        assert check(SAFE) == []
    assert caplog.records == []


def test_short_visibility_timeout_with_acks_late(caplog: pytest.LogCaptureFixture) -> None:
    conf = {**SAFE, "task_acks_late": True, "task_time_limit": 5000, "task_soft_time_limit": 4000}
    with caplog.at_level(logging.WARNING, logger="celery_kit"):
        [warning] = check(conf)  # Redis's default visibility timeout is one hour
    assert warning.code is WarningCode.VISIBILITY_TIMEOUT
    assert "runs twice" in warning.message
    assert "visibility_timeout" in warning.fix
    [record] = caplog.records
    assert record.celery_kit_warning == "redis-visibility-timeout"  # type: ignore[attr-defined]
    assert "[redis-visibility-timeout]" in record.getMessage()
    # Without late acks a running task is acknowledged already: no warning.
    assert check({**conf, "task_acks_late": False}, log=False) == []


def test_short_visibility_timeout_for_the_eta_horizon() -> None:
    conf = {**SAFE, "broker_transport_options": {"visibility_timeout": 600}, "celery_kit_eta_horizon": 900}
    assert _codes(check(conf, log=False)) == [WarningCode.VISIBILITY_TIMEOUT]
    assert check({**conf, "broker_url": AMQP}, log=False) == []  # RabbitMQ has real acks


def test_per_task_limits_count_for_the_visibility_timeout() -> None:
    app = Celery("check-tasks", set_as_current=False)
    app.conf.update({**SAFE, "task_acks_late": True})

    @app.task(name="app.long", shared=False, time_limit=7200, soft_time_limit=7000)  # type: ignore[untyped-decorator]
    def long_task() -> None: ...

    assert check(app.conf, log=False) == []
    assert _codes(check(app.conf, tasks=app.tasks.values(), log=False)) == [WarningCode.VISIBILITY_TIMEOUT]


def test_no_time_limits() -> None:
    conf = {k: v for k, v in SAFE.items() if "time_limit" not in k}
    [warning] = check(conf, log=False)
    assert warning.code is WarningCode.NO_TIME_LIMITS


def test_tasks_without_limits_are_named() -> None:
    app = Celery("check-unlimited", set_as_current=False)
    app.conf.update({**SAFE, "task_soft_time_limit": None, "task_time_limit": None})

    @app.task(name="app.limited", shared=False, time_limit=10)  # type: ignore[untyped-decorator]
    def limited() -> None: ...

    @app.task(name="app.unlimited", shared=False)  # type: ignore[untyped-decorator]
    def unlimited() -> None: ...

    tasks = [app.tasks[name] for name in ("app.limited", "app.unlimited", "celery.chord_unlock")]
    [warning] = check(app.conf, tasks=tasks, log=False)
    assert warning.code is WarningCode.NO_TIME_LIMITS
    assert "app.unlimited" in warning.message
    assert "app.limited" not in warning.message
    assert "celery." not in warning.message  # Celery's built-in tasks are not the app's


def test_soft_limit_not_below_hard() -> None:
    [warning] = check({**SAFE, "task_soft_time_limit": 40}, log=False)
    assert warning.code is WarningCode.SOFT_NOT_BELOW_HARD


@pytest.mark.parametrize(
    "extra",
    [
        {"accept_content": ["json", "pickle"]},
        {"result_accept_content": ["application/x-python-serialize"]},
        {"task_serializer": "pickle"},
    ],
)
def test_pickle_accepted(extra: dict[str, Any]) -> None:
    base = {**SAFE, "accept_content": ["json"], "result_accept_content": ["json"]}
    [warning] = check({**base, **extra}, log=False)
    assert warning.code is WarningCode.PICKLE_ACCEPTED


def test_prefetch_with_long_tasks() -> None:
    conf = {**SAFE, "worker_prefetch_multiplier": 4, "task_soft_time_limit": 300, "task_time_limit": 600}
    [warning] = check(conf, log=False)
    assert warning.code is WarningCode.PREFETCH_LONG_TASKS
    assert check({**conf, "worker_prefetch_multiplier": 1}, log=False) == []
    assert check({**SAFE, "worker_prefetch_multiplier": 4}, log=False) == []  # short tasks


def test_eager_in_production() -> None:
    config = production(REDIS, task_always_eager=True)
    assert _codes(check(config, log=False)) == [WarningCode.EAGER]
    assert _codes(check({**SAFE, "task_always_eager": True}, log=False)) == [WarningCode.EAGER]
    assert check(presets_testing(REDIS, task_always_eager=True), log=False) == []


def test_celery_defaults_count_when_a_mapping_leaves_settings_out() -> None:
    # Celery's defaults: no limits, prefetch 4, JSON only.
    assert _codes(check({"broker_url": REDIS}, log=False)) == [WarningCode.NO_TIME_LIMITS]


def test_warning_reads_with_its_fix() -> None:
    [warning] = check({**SAFE, "task_soft_time_limit": 50}, log=False)
    assert str(warning).startswith("[soft-limit-not-below-hard] ")
    assert "Fix: " in str(warning)
