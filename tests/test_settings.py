"""KitSettings: CELERY_KIT_* variables and .env, masked secrets, errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celery_kit import ConfigurationError
from celery_kit.presets import Preset, production, reliable
from celery_kit.settings import KitSettings

BROKER = "redis://:hunter2@redis.internal:6379/0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CELERY_KIT_* variable from the outside, and no .env but the test's own."""
    for name in list(os.environ):
        if name.startswith("CELERY_KIT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_reads_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_RESULT_BACKEND", "redis://:hunter2@redis.internal:6379/1")
    monkeypatch.setenv("CELERY_KIT_PRESET", "reliable")
    monkeypatch.setenv("CELERY_KIT_METRICS_PORT", "9100")
    monkeypatch.setenv("CELERY_KIT_METRICS_HOST", "127.0.0.1")
    monkeypatch.setenv("CELERY_KIT_HEALTH_FILE", "/run/kit/health.json")
    monkeypatch.setenv("CELERY_KIT_ALERT_SINKS", "https://hooks.slack.com/services/T/B/secret,log")
    monkeypatch.setenv("CELERY_KIT_MAX_PAYLOAD_BYTES", "1024")
    monkeypatch.setenv("CELERY_KIT_SOFT_TIME_LIMIT", "50")
    monkeypatch.setenv("CELERY_KIT_TIME_LIMIT", "60")
    monkeypatch.setenv("CELERY_KIT_QUEUES", '["email", "reports"]')
    settings = KitSettings()
    assert settings.broker_url.get_secret_value() == BROKER
    assert settings.preset is Preset.RELIABLE
    assert settings.metrics_port == 9100
    assert settings.metrics_host == "127.0.0.1"
    assert settings.health_file == Path("/run/kit/health.json")
    assert [s.get_secret_value() for s in settings.alert_sinks] == [
        "https://hooks.slack.com/services/T/B/secret",
        "log",
    ]
    assert settings.max_payload_bytes == 1024
    assert (settings.soft_time_limit, settings.time_limit) == (50, 60)
    assert settings.queues == ["email", "reports"]


def test_reads_a_dotenv_file_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    (clean_env / ".env").write_text(
        f"CELERY_KIT_BROKER_URL={BROKER}\nCELERY_KIT_PRESET=low-latency\nCELERY_KIT_QUEUES=a, b\n"
        "OTHER_SERVICE_SETTING=ignored\n"
    )
    settings = KitSettings()
    assert settings.broker_url.get_secret_value() == BROKER
    assert settings.preset is Preset.LOW_LATENCY
    assert settings.queues == ["a", "b"]
    monkeypatch.setenv("CELERY_KIT_PRESET", "DEVELOPMENT")
    assert KitSettings().preset is Preset.DEVELOPMENT


def test_secrets_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_ALERT_SINKS", "https://hooks.example/token-abc")
    settings = KitSettings()
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "hunter2" not in text
        assert "token-abc" not in text


def test_celery_config_is_the_chosen_presets_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_PRESET", "reliable")
    monkeypatch.setenv("CELERY_KIT_QUEUES", "email")
    monkeypatch.setenv("CELERY_KIT_ROUTE_PREFIX", "app.tasks.")
    monkeypatch.setenv("CELERY_KIT_RATE_LIMIT", "100/m")
    config = KitSettings().celery_config(result_expires=60)
    expected = reliable(
        BROKER,
        queues=["email"],
        route_prefix="app.tasks.",
        rate_limits="100/m",
        result_expires=60,
        # What instrument(app) reads: where metrics are served and where alerts go.
        celery_kit_metrics_port=9808,
        celery_kit_metrics_host="0.0.0.0",
        celery_kit_alert_sinks=[],
    )
    assert {k: v for k, v in config.items() if k != "task_queues"} == {
        k: v for k, v in expected.items() if k != "task_queues"
    }
    assert [q.name for q in config["task_queues"]] == ["celery", "email"]
    assert config["task_acks_late"] is True


def test_defaults_build_production() -> None:
    settings = KitSettings(broker_url="amqp://guest:guest@localhost//")
    assert settings.preset is Preset.PRODUCTION
    assert settings.celery_config() == production(
        "amqp://guest:guest@localhost//",
        celery_kit_metrics_port=9808,
        celery_kit_metrics_host="0.0.0.0",
        celery_kit_alert_sinks=[],
    )


def test_missing_broker_url_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="CELERY_KIT_BROKER_URL: required"):
        KitSettings()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CELERY_KIT_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("CELERY_KIT_METRICS_PORT", "http", "valid integer"),
        ("CELERY_KIT_PRESET", "fastest", "'production'"),
        ("CELERY_KIT_MAX_PAYLOAD_BYTES", "-1", "greater than or equal to 0"),
        ("CELERY_KIT_QUEUES", "a,a", "twice"),
        ("CELERY_KIT_QUEUES", "[oops", "JSON list"),
        ("CELERY_KIT_RATE_LIMIT", "100 per minute", "pattern"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        KitSettings()
    text = str(caught.value)
    assert f"{variable}: " in text
    assert message in text
    # pydantic's own error quotes input values (secrets too): it is not chained.
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_soft_limit_not_below_hard_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_SOFT_TIME_LIMIT", "400")
    with pytest.raises(ConfigurationError, match=r"CELERY_KIT_SOFT_TIME_LIMIT.*CELERY_KIT_TIME_LIMIT"):
        KitSettings()


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_ALERT_SINKS", '["ok", {"token": "s3cr3t"}]')
    with pytest.raises(ConfigurationError) as caught:
        KitSettings()
    assert "CELERY_KIT_ALERT_SINKS" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_preset_refusing_the_broker_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="scheme 'kafka'"):
        KitSettings(broker_url="kafka://h:9092").celery_config()


def test_preset_arguments_can_be_overridden_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_KIT_BROKER_URL", BROKER)
    monkeypatch.setenv("CELERY_KIT_QUEUES", "email")
    conf = KitSettings().celery_config(queues=["email", "reports"], route_prefix="app.tasks.", time_limit=400)
    assert conf == production(
        BROKER,
        queues=["email", "reports"],
        route_prefix="app.tasks.",
        time_limit=400,
        celery_kit_metrics_port=9808,
        celery_kit_metrics_host="0.0.0.0",
        celery_kit_alert_sinks=[],
    )


def test_health_file_alert_redis_and_metrics_off_reach_instrument(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery

    from celery_kit import instrument

    monkeypatch.setenv("CELERY_KIT_BROKER_URL", "memory://")
    monkeypatch.setenv("CELERY_KIT_HEALTH_FILE", "/run/kit/%n.json")
    monkeypatch.setenv("CELERY_KIT_ALERT_REDIS_URL", "redis://:hunter2@redis.internal:6379/3")
    monkeypatch.setenv("CELERY_KIT_METRICS_PORT", "0")
    settings = KitSettings()
    assert "hunter2" not in repr(settings)
    conf = settings.celery_config()
    assert conf["celery_kit_health_file"] == "/run/kit/%n.json"
    assert conf["celery_kit_metrics_port"] == 0
    app = Celery("settings-to-instrument", set_as_current=False)
    app.config_from_object(conf)
    wired = instrument(app, logging=False)
    assert wired.alerts is not None
    assert type(wired.alerts.delivery.throttle).__name__ == "RedisThrottle"  # shared, not per process
    assert wired.health is not None
    assert wired.health.state_file == "/run/kit/%n.json"
    app.close()
