"""``celery -A proj kit config|schema``: in-process through Celery's click group, and through
the real ``celery.commands`` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.bin.celery import celery as celery_cli
from click.testing import CliRunner, Result

import celery_kit
from celery_kit._redact import MASK, is_secret_name, redact, redact_url
from celery_kit.cli import kit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
celery_cli.add_command(kit)  # what the entry point does when celery_kit is installed

PROJECT = """
from celery import Celery
from pydantic import BaseModel, Field
from celery_kit import validated_task
from celery_kit import presets

app = Celery("{name}", set_as_current=False)
app.config_from_object(presets.{preset}(
    "redis://:hunter2@redis.internal:6379/0",
    "redis://:hunter2@redis.internal:6379/1",
    queues=["email"],
    celery_kit_alert_token="xoxb-s3cr3t",
    {extra}
))

class Email(BaseModel):
    to: str = Field(min_length=3)
    subject: str

class Sent(BaseModel):
    message_id: str

@validated_task(app, shared=False, name="proj.send_email")
def send_email(email: Email) -> Sent:
    return Sent(message_id="1")

@validated_task(app, shared=False, name="proj.add")
def add(x: int, y: int = 0, *more: int, **labels: str) -> int:
    return x + y

@app.task(shared=False, name="proj.plain")
def plain() -> None: ...
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[Any]:
    """Write an app module; call the fixture's result with preset/extra to get its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def make(preset: str = "production", extra: str = "") -> str:
        name = f"kit_cli_proj_{unique.replace('-', '_')}_{len(written)}"
        (tmp_path / f"{name}.py").write_text(PROJECT.format(name=name, preset=preset, extra=extra))
        written.append(name)
        return name

    yield make
    for name in written:
        sys.modules.pop(name, None)


def _run(*args: str) -> Result:
    return CliRunner().invoke(celery_cli, list(args), catch_exceptions=False)


# -- config ------------------------------------------------------------------------------------


def test_config_text_masks_secrets_and_reports_no_warning(project: Any) -> None:
    result = _run("-A", project(), "kit", "config")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "s3cr3t" not in result.output
    assert f'broker_url = "redis://:{MASK}@redis.internal:6379/0"' in result.output
    assert f'celery_kit_alert_token = "{MASK}"' in result.output
    assert 'celery_kit_preset = "production"' in result.output
    assert '"name": "email"' in result.output  # queues described, not repr'd
    assert result.output.rstrip().endswith("No warnings.")


def test_config_json_lists_the_checks_warnings(project: Any) -> None:
    name = project(extra="task_acks_late=True, broker_transport_options={'visibility_timeout': 30},")
    result = _run("-A", name, "kit", "config", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["config"]["task_acks_late"] is True
    assert document["config"]["result_backend"] == f"redis://:{MASK}@redis.internal:6379/1"
    assert [w["code"] for w in document["warnings"]] == ["redis-visibility-timeout"]
    assert "visibility_timeout" in document["warnings"][0]["fix"]


def test_config_strict_fails_on_warnings(project: Any) -> None:
    assert _run("-A", project(), "kit", "config", "--strict").exit_code == 0
    risky = project(extra="task_always_eager=True,")
    result = _run("-A", risky, "kit", "config", "--strict")
    assert result.exit_code == 1
    assert "[always-eager]" in result.output


def test_config_all_includes_celery_defaults(project: Any) -> None:
    name = project()
    without = json.loads(_run("-A", name, "kit", "config", "--json").output)["config"]
    with_defaults = json.loads(_run("-A", name, "kit", "config", "--json", "--all").output)["config"]
    assert "worker_concurrency" not in without
    assert "worker_concurrency" in with_defaults


def test_kit_needs_an_app_context() -> None:
    result = CliRunner().invoke(kit, ["config"])
    assert result.exit_code == 2
    assert "celery -A proj kit" in result.output


# -- schema ------------------------------------------------------------------------------------

_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
_KEYWORDS = {
    "$defs", "$ref", "additionalProperties", "anyOf", "allOf", "oneOf", "default", "description",
    "enum", "const", "format", "items", "prefixItems", "maxItems", "minItems", "maxLength", "minLength",
    "maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum", "pattern", "properties", "required",
    "title", "type", "uniqueItems", "x-celery-kit-varargs", "$schema",
}  # fmt: skip


def _assert_json_schema(schema: Any, defs: dict[str, Any]) -> None:
    """Structural check against the JSON Schema (2020-12) vocabulary pydantic emits."""
    assert isinstance(schema, (dict, bool))
    if isinstance(schema, bool):
        return
    assert set(schema) <= _KEYWORDS, set(schema) - _KEYWORDS
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert set(types) <= _TYPES
    if "$ref" in schema:
        assert schema["$ref"].removeprefix("#/$defs/") in defs
    for key in ("properties", "$defs"):
        for sub in schema.get(key, {}).values():
            _assert_json_schema(sub, defs)
    for key in ("items", "additionalProperties", "x-celery-kit-varargs"):
        if key in schema:
            _assert_json_schema(schema[key], defs)
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        for sub in schema.get(key, []):
            _assert_json_schema(sub, defs)
    if "required" in schema:
        assert set(schema["required"]) <= set(schema.get("properties", {}))


def test_schema_describes_every_validated_task(project: Any) -> None:
    result = _run("-A", project(), "kit", "schema")
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert json.loads(json.dumps(document)) == document
    tasks = document["tasks"]
    # The plain task has no schema; shared tasks other test modules define are not ours.
    assert {name for name in tasks if name.startswith("proj.")} == {"proj.send_email", "proj.add"}
    for described in tasks.values():
        for part in ("payload", "result"):
            _assert_json_schema(described[part], described[part].get("$defs", {}))
            assert described[part]["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    email = tasks["proj.send_email"]
    assert email["payload"]["type"] == "object"
    assert email["payload"]["required"] == ["to", "subject"]
    assert email["payload"]["properties"]["to"]["minLength"] == 3
    assert email["result"]["properties"]["message_id"]["type"] == "string"

    add = tasks["proj.add"]
    assert add["payload"]["properties"]["x"]["type"] == "integer"
    assert add["payload"]["required"] == ["x"]
    assert add["payload"]["additionalProperties"] == {"type": "string"}  # **labels
    assert add["payload"]["x-celery-kit-varargs"]["items"] == {"type": "integer"}  # *more
    assert add["result"] == {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "integer"}


def test_schema_tells_a_none_result_from_an_unannotated_one(project: Any, tmp_path: Path) -> None:
    name = project()
    module = tmp_path / f"{name}.py"
    module.write_text(
        module.read_text()
        + "\n@validated_task(app, shared=False, name='proj.notify')\n"
        + "def notify(user_id: int) -> None: ...\n"
        + "\n@validated_task(app, shared=False, name='proj.untyped')\n"
        + "def untyped(user_id: int): ...\n"
    )
    result = _run("-A", name, "kit", "schema", "--task", "proj.notify", "--task", "proj.untyped")
    assert result.exit_code == 0, result.output
    tasks = json.loads(result.output)["tasks"]
    dialect = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    assert tasks["proj.notify"]["result"] == {**dialect, "type": "null"}
    assert tasks["proj.untyped"]["result"] == dialect  # any JSON value


def test_schema_for_one_task_and_unknown_names(project: Any) -> None:
    name = project()
    result = _run("-A", name, "kit", "schema", "--task", "proj.add")
    assert list(json.loads(result.output)["tasks"]) == ["proj.add"]
    unknown = CliRunner().invoke(celery_cli, ["-A", name, "kit", "schema", "--task", "proj.nope"])
    assert unknown.exit_code == 2
    assert "proj.nope" in unknown.output


def test_schema_of_a_type_json_schema_cannot_describe_fails_readably(project: Any, tmp_path: Path) -> None:
    name = project(extra="")
    module = tmp_path / f"{name}.py"
    module.write_text(
        module.read_text()
        + "\nfrom collections.abc import Callable\n"
        + "@validated_task(app, shared=False, name='proj.callback')\n"
        + "def callback(fn: Callable[[], None]) -> None: ...\n"
    )
    result = CliRunner().invoke(celery_cli, ["-A", name, "kit", "schema"])
    assert result.exit_code == 1
    assert "proj.callback" in result.output
    assert "proj.add" in result.output  # the others are still printed


# -- the real entry point, in a subprocess ---------------------------------------------------------


def test_entry_point_declared_in_pyproject_runs_under_celery(project: Any, tmp_path: Path) -> None:
    """Install only the entry-point metadata pyproject declares, then run ``celery ... kit``."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["celery.commands"] == {"kit": "celery_kit.cli:kit"}
    dist = tmp_path / "site" / "celery_kit_entry_point_test-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: celery-kit-entry-point-test\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[celery.commands]\n" + "".join(f"{k} = {v}\n" for k, v in declared["celery.commands"].items())
    )
    name = project()
    src = Path(celery_kit.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(tmp_path / "site"), str(tmp_path)])}
    completed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", name, "kit", "config", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["config"]["celery_kit_preset"] == "production"
    assert "hunter2" not in completed.stdout
    assert document["warnings"] == []


# -- masking -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("redis://:pw@h:6379/0", f"redis://:{MASK}@h:6379/0"),
        ("amqp://user:p%40ss@h//", f"amqp://user:{MASK}@h//"),
        ("redis://:a@h1;redis://:b@h2", f"redis://:{MASK}@h1;redis://:{MASK}@h2"),
        ("https://h/x?api_key=abc&x=1", f"https://h/x?api_key={MASK}&x=1"),
        ("https://h/x?token=abc", f"https://h/x?token={MASK}"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("memory://", "memory://"),
    ],
)
def test_redact_url(text: str, masked: str) -> None:
    assert redact_url(text) == masked


def test_redact_by_name_and_type() -> None:
    from pydantic import SecretStr

    data = {
        "db_password": "x",
        "api_token": "y",
        "aws_secret_access_key": "z",
        "task_default_routing_key": "celery",
        "nested": {"webhook": SecretStr("s"), "urls": ["redis://:q@h"]},
        "empty_password": "",
    }
    assert redact(data) == {
        "db_password": MASK,
        "api_token": MASK,
        "aws_secret_access_key": MASK,
        "task_default_routing_key": "celery",
        "nested": {"webhook": MASK, "urls": [f"redis://:{MASK}@h"]},
        "empty_password": "",
    }
    assert data["db_password"] == "x"  # the original is untouched
    assert is_secret_name("broker_password")
    assert not is_secret_name("task_default_queue")
