"""``celery -A proj kit ...``: the effective config and the payload contracts.

Registered as a Celery sub-command through the ``celery.commands`` entry point, so it
runs with the app Celery loaded from ``-A``:

* ``celery -A proj kit config [--json] [--all] [--strict]`` prints the settings the app
  really runs with (secrets masked) and :func:`celery_kit.presets.check`'s warnings;
  ``--strict`` exits 1 when there is any, for CI.
* ``celery -A proj kit schema [--task NAME ...]`` prints the JSON Schema of every
  validated task's payload and result, for contract tests between producers and workers
  and for docs. Each is a standalone JSON Schema (``$schema`` names its draft); a result
  declared ``-> None`` is ``{"type": "null"}``, an unannotated one ``{}`` (any JSON value).
  Defaults and examples of secret fields are masked, by the same redactor as the config.
* ``celery -A proj kit dlq list|show|replay|purge|stats`` reads and replays the app's dead
  letters (:mod:`celery_kit.deadletter`).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Mapping
from datetime import timedelta
from enum import Enum
from pathlib import PurePath
from typing import Any

import click
from kombu.entity import Exchange, Queue
from pydantic.errors import PydanticInvalidForJsonSchema

from ._errors import ConfigurationError
from ._payload import PayloadSchema
from ._redact import redact, redact_schema
from ._task import ValidatedTask
from .presets import ConfigWarning, check

__all__ = ["jsonable", "kit"]

#: The JSON Schema draft pydantic generates.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: Keys Celery keeps in ``app.conf`` for itself, not settings.
_INTERNAL_KEYS = frozenset({"deprecated_settings"})


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; kombu queues and schedules described, not pickled."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, Queue):
        exchange = value.exchange
        return {
            "name": value.name,
            "exchange": exchange.name if exchange is not None else None,
            "exchange_type": exchange.type if exchange is not None else None,
            "routing_key": value.routing_key,
            "durable": value.durable,
            "queue_arguments": jsonable(getattr(value, "queue_arguments", None)),
        }
    if isinstance(value, Exchange):
        return {"name": value.name, "type": value.type}
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(item) for item in value), key=repr)
    return repr(value)


def _app(ctx: click.Context) -> Any:
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.UsageError("run it through Celery, with your app: celery -A proj kit ...")
    return app


def _user_tasks(app: Any) -> list[Any]:
    app.loader.import_default_modules()
    return [task for name, task in sorted(app.tasks.items()) if not name.startswith("celery.")]


def _warning_dict(warning: ConfigWarning) -> dict[str, str]:
    return {"code": warning.code.value, "message": warning.message, "fix": warning.fix}


def _returns_none(fun: Any) -> bool:
    """Whether the task function is annotated ``-> None`` (``-> Any`` and none: any value)."""
    try:
        return typing.get_type_hints(fun).get("return", Any) is type(None)
    except Exception:  # unresolvable hints were reported when the payload schema was built
        return getattr(fun, "__annotations__", {}).get("return") in (None, "None") and (
            "return" in getattr(fun, "__annotations__", {})
        )


def _task_schema(payload_schema: PayloadSchema) -> dict[str, Any]:
    """The task's payload and result as standalone JSON Schemas, secrets masked."""
    described = payload_schema.json_schema()
    result = described["result"]
    if result is None:
        # json_schema() says None for ``-> None``, ``-> Any`` and no annotation alike.
        result = {"type": "null"} if _returns_none(payload_schema.fun) else {}
    return {
        part: {"$schema": JSON_SCHEMA_DIALECT, **redact_schema(schema)}
        for part, schema in (("payload", described["payload"]), ("result", result))
    }


@click.group(name="kit")
def kit() -> None:
    """celery_kit tools: the effective config and the payload schemas."""


@kit.command(name="config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of readable text.")
@click.option("--all", "with_defaults", is_flag=True, help="Include settings left at Celery's defaults.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when the check finds anything.")
@click.pass_context
def config(ctx: click.Context, as_json: bool, with_defaults: bool, strict: bool) -> None:
    """Print the effective config, secrets masked, and the check's warnings."""
    app = _app(ctx)
    tasks = _user_tasks(app)
    settings = app.conf.table(with_defaults=with_defaults, censored=False)
    shown = {
        key: jsonable(redact(settings[key], key)) for key in sorted(settings) if key not in _INTERNAL_KEYS
    }
    warnings = check(app.conf, tasks=tasks, log=False)
    if as_json:
        document = {"config": shown, "warnings": [_warning_dict(w) for w in warnings]}
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    else:
        for key, value in shown.items():
            click.echo(f"{key} = {json.dumps(value, sort_keys=True)}")
        click.echo("")
        if warnings:
            click.echo(f"{len(warnings)} warning(s):")
            for warning in warnings:
                click.echo(f"  [{warning.code.value}] {warning.message}")
                click.echo(f"      fix: {warning.fix}")
        else:
            click.echo("No warnings.")
    if strict and warnings:
        ctx.exit(1)


@kit.command(name="schema")
@click.option("--task", "names", multiple=True, help="Only this task (repeatable).")
@click.pass_context
def schema(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Print the JSON Schema of every validated task's payload and result."""
    app = _app(ctx)
    tasks = {
        task.name: task for task in _user_tasks(app) if isinstance(task, ValidatedTask) and task._kit_rules()
    }
    missing = sorted(set(names) - set(tasks))
    if missing:
        raise click.BadParameter(
            f"no validated task named {', '.join(missing)}; known: {', '.join(sorted(tasks)) or 'none'}",
            param_hint="--task",
        )
    document: dict[str, Any] = {}
    failed: list[str] = []
    for name in sorted(names or tasks):
        payload_schema = tasks[name].payload_schema
        assert payload_schema is not None
        try:
            document[name] = _task_schema(payload_schema)
        except (ConfigurationError, PydanticInvalidForJsonSchema) as exc:
            failed.append(f"{name}: {exc}")
    click.echo(json.dumps({"tasks": document}, indent=2, sort_keys=True))
    if failed:
        click.echo(
            "cannot describe as JSON Schema:\n  " + "\n  ".join(failed) + "\nAnnotate these tasks with "
            "JSON-compatible types (models, str, int, lists, ...).",
            err=True,
        )
        ctx.exit(1)


# -- dead letters (issue 17): celery -A proj kit dlq ... ---------------------------------------
from .deadletter._cli import dlq  # noqa: E402  -- registered on the group defined above

kit.add_command(dlq)
