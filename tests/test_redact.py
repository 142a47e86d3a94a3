"""celery_kit._redact: one set of rules and one mask, checked through every place the kit
writes secrets could reach -- an alert's payload, a log line, ``celery kit config`` and
``celery kit schema``."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.celery import celery as celery_cli
from click.testing import CliRunner
from pydantic import BaseModel, SecretStr

from celery_kit import dispatcher_for, validated_task
from celery_kit._log_observer import LoggingObserver
from celery_kit._redact import MASK, is_secret_name, redact, redact_schema
from celery_kit.alerts import Alert, AlertDelivery, AlertObserver, CallbackSink, LocalThrottle
from celery_kit.alerts import redact as alerts_redact
from celery_kit.cli import kit

celery_cli.add_command(kit)  # what the entry point does when celery_kit is installed

#: The names issue 19 found in clear in alerts, and the names either old redactor knew.
SECRET_NAMES = [
    "signing_key",
    "ssh_key",
    "encryption_key",
    "license_key",
    "password",
    "db_password",
    "passwd",
    "passphrase",
    "client_secret",
    "api_token",
    "access_token",
    "api_key",
    "aws_secret_access_key",
    "private_key",
    "auth",
    "basic_auth",
    "authorization",
    "credentials",
    "token_hint",
    "sqlalchemy_dburi",
    "alert_sinks",
    # case and spelling variants
    "SIGNING_KEY",
    "signingKey",
    "SigningKey",
    "Ssh-Key",
    "sshkey",
    "ENCRYPTION_KEY",
    "encryptionKey",
    "licenseKey",
    "LICENSE-KEY",
    "APIKey",
    "apiKey",
    "x-api-key",
    "Password",
    "DBPassword",
    "clientSecret",
    "accesstoken",
    "X-Auth-Token",
]
NOT_SECRET_NAMES = [
    "user",
    "routing_key",
    "routingKey",
    "task_default_routing_key",
    "result_key_prefix",
    "public_key",
    "primary_key",
    "monkey",
    "author",
    "compass",
    "passport_country",
    "task_default_queue",
    "broker_url",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_recognised_in_any_case_or_spelling(name: str) -> None:
    assert is_secret_name(name)
    assert redact({name: "v-1"}) == {name: MASK}


@pytest.mark.parametrize("name", NOT_SECRET_NAMES)
def test_ordinary_names_are_left_alone(name: str) -> None:
    assert not is_secret_name(name)
    assert redact({name: "v-1"}) == {name: "v-1"}


def test_one_mask_and_one_redactor() -> None:
    assert str(SecretStr("x")) == MASK  # what pydantic shows for a SecretStr it dumps
    assert alerts_redact is redact


def test_nested_structures_secret_types_and_urls() -> None:
    data: dict[str, Any] = {
        "user": "ada",
        "nested": [{"ssh_key": "v-1", "note": "n", "deeper": {"signingKey": "v-2"}}],
        "webhook": SecretStr("v-3"),
        "tuple": ("redis://:v-4@h:6379/0", "plain"),
        "empty_password": "",
        "use_auth": True,  # a flag holds no secret
        "credentials": {"user": "u", "anything": "v-5"},  # masked whole
    }
    assert redact(data) == {
        "user": "ada",
        "nested": [{"ssh_key": MASK, "note": "n", "deeper": {"signingKey": MASK}}],
        "webhook": MASK,
        "tuple": (f"redis://:{MASK}@h:6379/0", "plain"),
        "empty_password": "",
        "use_auth": True,
        "credentials": MASK,
    }
    assert data["nested"][0]["ssh_key"] == "v-1"  # the original is untouched


# -- through the real output paths ---------------------------------------------------------


class Key(BaseModel):
    ssh_key: str
    note: str


class Secrets(BaseModel):
    user: str
    signing_key: str
    ssh_key: str
    encryption_key: str
    license_key: str
    webhook: SecretStr
    broker: str
    extra: dict[str, str]
    keys: list[Key]


#: Keyword arguments of a Secrets payload; every value starting ``v-`` is a secret.
SECRETS_KWARGS: dict[str, Any] = {
    "user": "ada",
    "signing_key": "v-signing",
    "ssh_key": "v-ssh",
    "encryption_key": "v-encryption",
    "license_key": "v-license",
    "webhook": "v-secretstr",
    "broker": "redis://:v-urlpassword@h:6379/0",
    "extra": {
        "ENCRYPTION_KEY": "v-enc-upper",
        "licenseKey": "v-camel",
        "Signing-Key": "v-dash",
        "routingKey": "r",
    },
    "keys": [{"ssh_key": "v-nested", "note": "n"}],
}
REDACTED = {
    "user": "ada",
    "signing_key": MASK,
    "ssh_key": MASK,
    "encryption_key": MASK,
    "license_key": MASK,
    "webhook": MASK,
    "broker": f"redis://:{MASK}@h:6379/0",
    "extra": {"ENCRYPTION_KEY": MASK, "licenseKey": MASK, "Signing-Key": MASK, "routingKey": "r"},
    "keys": [{"ssh_key": MASK, "note": "n"}],
}


def _assert_no_secret(text: str) -> None:
    assert "v-" not in text, text


def test_alert_payload_is_redacted(app: Celery) -> None:
    sent: list[Alert] = []
    delivery = AlertDelivery([CallbackSink(sent.append)], LocalThrottle(window=60))
    dispatcher_for(app).subscribe(AlertObserver(delivery))

    @validated_task(app, shared=False, name="r.alerted", alert_payload=True)
    def alerted(secrets: Secrets) -> None:
        raise PermissionError("locked")

    alerted.apply(kwargs=SECRETS_KWARGS)
    delivery.close()
    (alert,) = sent
    assert alert.payload == REDACTED
    _assert_no_secret(alert.model_dump_json())


def test_log_line_payload_is_redacted(app: Celery, stream: io.StringIO) -> None:
    dispatcher_for(app).subscribe(LoggingObserver())

    @validated_task(app, shared=False, name="r.logged", log_payload=True)
    def logged(secrets: Secrets) -> None: ...

    logged.apply(kwargs=SECRETS_KWARGS)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines() if "task succeeded" in text]
    assert line["payload"] == REDACTED
    _assert_no_secret(stream.getvalue())


APP_MODULE = """
from celery import Celery
from pydantic import BaseModel, Field, SecretStr
from celery_kit import validated_task

app = Celery("{name}", broker="redis://:v-broker@redis.internal:6379/0", set_as_current=False)
app.conf.update(
    celery_kit_signing_key="v-signing",
    deploy_ssh_key="v-ssh",
    encryption_key="v-encryption",
    license_key="v-license",
    celery_kit_webhook=SecretStr("v-secretstr"),
    my_service={{"endpoint": "https://h/x?token=v-query", "licenseKey": "v-camel",
                 "replicas": [{{"SSH_KEY": "v-nested", "host": "a"}}]}},
    task_default_routing_key="shown",
)


class Options(BaseModel):
    signing_key: str = "v-default"
    ssh_key: str = Field("", examples=["v-example"])
    webhook: SecretStr = SecretStr("v-secretstr")
    extra: dict[str, str] = {{"encryptionKey": "v-default-dict", "region": "eu"}}
    broker: str = "redis://:v-urlpassword@h:6379/0"
    licenseKey: str | None = Field(default="v-optional")
    user: str = "ada"


@validated_task(app, shared=False, name="r.configured")
def configured(options: Options) -> None: ...
"""


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[str]:
    name = f"kit_redact_proj_{unique.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE.format(name=name))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_config_output_is_redacted(app_module: str) -> None:
    for extra in ([], ["--json"]):
        result = CliRunner().invoke(celery_cli, ["-A", app_module, "kit", "config", *extra])
        assert result.exit_code == 0, result.output
        _assert_no_secret(result.output)
    config = json.loads(result.output)["config"]
    secrets = ("celery_kit_signing_key", "deploy_ssh_key", "encryption_key", "license_key")
    for key in (*secrets, "celery_kit_webhook"):
        assert config[key] == MASK
    assert config["my_service"] == {
        "endpoint": f"https://h/x?token={MASK}",
        "licenseKey": MASK,
        "replicas": [{"SSH_KEY": MASK, "host": "a"}],
    }
    assert config["broker_url"] == f"redis://:{MASK}@redis.internal:6379/0"
    assert config["task_default_routing_key"] == "shown"


def test_schema_export_is_redacted(app_module: str) -> None:
    result = CliRunner().invoke(celery_cli, ["-A", app_module, "kit", "schema"])
    assert result.exit_code == 0, result.output
    _assert_no_secret(result.output)
    properties = json.loads(result.output)["tasks"]["r.configured"]["payload"]["properties"]
    assert set(properties) == {"signing_key", "ssh_key", "webhook", "extra", "broker", "licenseKey", "user"}
    assert properties["signing_key"]["default"] == MASK
    assert properties["ssh_key"]["examples"] == [MASK]
    assert properties["webhook"]["default"] == MASK
    assert properties["extra"]["default"] == {"encryptionKey": MASK, "region": "eu"}
    assert properties["broker"]["default"] == f"redis://:{MASK}@h:6379/0"
    assert properties["licenseKey"]["default"] == MASK
    assert properties["licenseKey"]["anyOf"] == [{"type": "string"}, {"type": "null"}]  # structure kept
    assert properties["user"]["default"] == "ada"


def test_schema_redaction_keeps_structure_and_masks_write_only_values() -> None:
    schema = {
        "properties": {
            "password": {"type": "string", "enum": ["a", "b"], "title": "Password"},
            "pin": {"type": "string", "writeOnly": True, "const": "1234"},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
        },
        "$defs": {"Secret": {"properties": {"token": {"default": "t"}}}},
        "required": ["password"],
    }
    assert redact_schema(schema) == {
        "properties": {
            "password": {"type": "string", "enum": [MASK, MASK], "title": "Password"},
            "pin": {"type": "string", "writeOnly": True, "const": MASK},
            "mode": {"type": "string", "enum": ["fast", "slow"]},
        },
        "$defs": {"Secret": {"properties": {"token": {"default": MASK}}}},
        "required": ["password"],
    }
