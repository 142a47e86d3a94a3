"""``celery -A proj kit dlq ...``: list, show, replay, purge and count dead letters.

Every command takes ``--json`` and then prints exactly one JSON document (for scripts);
without it, short readable text. Secrets are masked in everything printed. ``replay``
and ``purge`` exit with status 1 when some id was not replayed or not found, so a script
notices.
"""

from __future__ import annotations

import json
import re
from typing import Any

import click

from ._entry import DeadLetter
from ._store import DeadLetterStore, ReplayResult

__all__ = ["dlq", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` or plain seconds, as seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r}: give a duration such as 7d, 12h, 30m or 90s")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _store(ctx: click.Context) -> DeadLetterStore:
    from ..cli import _app

    app = _app(ctx)
    app.loader.import_default_modules()
    return DeadLetterStore.for_app(app)


def _emit(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True, default=str))


def _line(entry: DeadLetter) -> str:
    when = entry.stored_at.strftime("%Y-%m-%d %H:%M:%S")
    error = f"{entry.exception_type}: {entry.exception_message}" if entry.exception_type else ""
    return f"{entry.id}  {when}  {entry.task_name}  {entry.kind} ({entry.reason})  {error}".rstrip()


@click.group(name="dlq")
def dlq() -> None:
    """Dead letters: every message the kit gave up on, kept and replayable."""


@dlq.command(name="list")
@click.option("--task", default=None, help="Only this task's entries.")
@click.option("--limit", default=100, show_default=True, help="At most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def list_(ctx: click.Context, task: str | None, limit: int, as_json: bool) -> None:
    """List entries, newest first (secrets masked)."""
    with _store(ctx) as store:
        entries = store.list(task=task, limit=limit or None)
    if as_json:
        _emit({"entries": [e.model_dump(mode="json") for e in entries]})
        return
    for entry in entries:
        click.echo(_line(entry))
    click.echo(f"{len(entries)} dead letter(s)" + (f" of {task}" if task else ""))


@dlq.command(name="show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """Show one entry whole: the message, its headers, the error (secrets masked)."""
    with _store(ctx) as store:
        entry = store.get(entry_id)
    if entry is None:
        if as_json:
            _emit({"entry": None})
        click.echo(f"no dead letter {entry_id!r}", err=True)
        ctx.exit(1)
        return
    if as_json:
        _emit({"entry": entry.model_dump(mode="json")})
        return
    for key, value in entry.model_dump(mode="json", exclude={"message"}).items():
        click.echo(f"{key}: {value}")
    message = entry.message
    click.echo(f"routing: exchange={message.exchange!r} routing_key={message.routing_key!r}")
    click.echo(f"content: {message.content_type} ({message.content_encoding}, {message.body_encoding})")
    click.echo("headers: " + json.dumps(message.headers, sort_keys=True, default=str))
    click.echo("properties: " + json.dumps(message.properties, sort_keys=True, default=str))
    click.echo("body: " + message.body)


def _result_document(result: ReplayResult) -> dict[str, Any]:
    return {
        "replayed": result.replayed,
        "kept": result.kept,
        "busy": result.busy,
        "missing": result.missing,
        "failed": result.failed,
    }


@dlq.command(name="replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every entry (of --task, if given).")
@click.option("--task", default=None, help="With --all: only this task's entries.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def replay(
    ctx: click.Context, ids: tuple[str, ...], everything: bool, task: str | None, as_json: bool
) -> None:
    """Re-validate and publish entries again; each is removed once the broker confirmed it."""
    if bool(ids) == everything:
        raise click.UsageError("give entry ids, or --all (optionally with --task)")
    with _store(ctx) as store:
        chosen = list(ids) if ids else store.ids(task=task)
        if ids and task:
            by_id = {e.id: e for e in store.list(task=task, limit=None, reveal=True)}
            chosen = [i for i in ids if i in by_id]
        result = store.replay(chosen)
    if as_json:
        _emit(_result_document(result))
    else:
        for entry_id in result.replayed:
            click.echo(f"replayed {entry_id}")
        for entry_id, reason in result.kept.items():
            click.echo(f"kept {entry_id}: {reason}")
        for entry_id in result.busy:
            click.echo(f"busy {entry_id}: another replay holds it")
        for entry_id in result.missing:
            click.echo(f"missing {entry_id}: no such dead letter")
        for entry_id, reason in result.failed.items():
            click.echo(f"failed {entry_id}: the publish failed ({reason}); the entry stays")
        click.echo(f"{len(result.replayed)} replayed, {len(chosen) - len(result.replayed)} not")
    if not result.ok:
        ctx.exit(1)


@dlq.command(name="purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every entry.")
@click.option("--older-than", "older_than", default=None, help="Entries stored longer ago (7d, 12h, 30m).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def purge(
    ctx: click.Context, ids: tuple[str, ...], everything: bool, older_than: str | None, as_json: bool
) -> None:
    """Remove entries for good."""
    if sum((bool(ids), everything, older_than is not None)) != 1:
        raise click.UsageError("give entry ids, --all, or --older-than DURATION (one of them)")
    with _store(ctx) as store:
        if ids:
            removed = store.purge(ids)
        elif older_than is not None:
            removed = store.purge(older_than=parse_duration(older_than))
        else:
            removed = store.purge(all=True)
    if as_json:
        _emit({"purged": removed})
    else:
        click.echo(f"{removed} dead letter(s) purged")
    if ids and removed < len(set(ids)):
        ctx.exit(1)


@dlq.command(name="stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """How many entries there are, by task, and how many retention dropped."""
    with _store(ctx) as store:
        result = store.stats()
    if as_json:
        _emit(result.model_dump(mode="json"))
        return
    click.echo(f"store: {result.backend} {result.location}")
    click.echo(f"entries: {result.total} (max {result.max_entries}, max age {result.max_age:g} s)")
    for task, count in result.by_task.items():
        click.echo(f"  {task}: {count}")
    click.echo(f"dropped by retention: {sum(result.dropped.values())}")
    for task, count in result.dropped.items():
        click.echo(f"  {task}: {count}")
    if result.oldest is not None:
        newest = result.newest.isoformat() if result.newest else ""
        click.echo(f"oldest: {result.oldest.isoformat()}  newest: {newest}")
