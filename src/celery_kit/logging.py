"""Structured logs with structlog: one JSON line per event, context that follows a task.

* :func:`configure_logging` routes the standard library's logging -- Celery's own
  loggers and ``get_task_logger`` included -- and structlog through one renderer: JSON
  lines in production, a readable console in a terminal. Workers of an instrumented app
  call it themselves (they take logging over from Celery); call it yourself outside a
  worker if you want the same lines there.
* The logging observer (``instrument(app)``) logs each task lifecycle step once and
  binds the task's ids while it runs. Outside a worker it logs through the standard
  library's ``celery_kit.tasks`` logger, so your logging configuration decides.
* Producer to worker: an allowlisted, JSON-safe part of the producer's structlog context
  (``request_id``, ``correlation_id`` by default; ``instrument(log_context=...)``) travels
  in one message header and is bound on the worker.

Payload values are never logged unless a task opts in with ``log_payload=True``; even
then secrets are masked by the kit's one redactor (``SecretStr``/``SecretBytes`` fields,
fields named like a password, token or key, URL passwords), as in alerts and
``celery kit config``.
"""

from __future__ import annotations

import json as std_json
import logging as std_logging
import sys
from collections.abc import Iterable
from typing import IO, Any

import structlog

from ._context import CONTEXT_HEADER, DEFAULT_PROPAGATED_KEYS

try:
    import orjson as _orjson
except ImportError:  # not built for every interpreter (PyPy): the standard library's encoder
    _orjson = None  # type: ignore[assignment]

__all__ = ["CONTEXT_HEADER", "DEFAULT_PROPAGATED_KEYS", "configure_logging", "propagate_context"]

#: Keys that are not strings (``log.info("x", counts={1: 2})``) are written as strings, as
#: the standard library's encoder writes them.
_ORJSON_OPTIONS = _orjson.OPT_NON_STR_KEYS if _orjson is not None else 0
#: Marks the handler :func:`configure_logging` installs, so a second call replaces it.
HANDLER_MARKER = "_celery_kit_handler"


def json_dumps(obj: Any, **options: Any) -> str:
    """The serializer of the kit's ``JSONRenderer``: orjson, else the standard library.

    orjson (installed with the kit on CPython) renders a line in a fraction of the
    standard library's time; what it refuses -- an int beyond 64 bits, a string with a
    lone surrogate -- is rendered by ``json.dumps`` with the same fallback (structlog's
    ``default``), so no line is ever lost to its content. orjson writes UTF-8 rather than
    ``\\u`` escapes, and ``NaN`` as ``null`` (standard JSON).
    """
    if _orjson is not None:
        try:
            return _orjson.dumps(obj, default=options.get("default"), option=_ORJSON_OPTIONS).decode()
        except TypeError:  # orjson.JSONEncodeError: content it cannot write
            pass
    return std_json.dumps(obj, **options)


def renderer(json: bool) -> Any:
    """The last processor of every line: JSON, or structlog's console renderer."""
    if json:
        return structlog.processors.JSONRenderer(serializer=json_dumps)
    return structlog.dev.ConsoleRenderer()


class KitExtras:
    """Adds the ``extra`` fields of the kit's own records (``celery_kit.*`` loggers) to
    their lines, with structlog's :class:`~structlog.stdlib.ExtraAdder`.

    Only the kit's: other libraries put what they like in ``extra`` -- Celery's own task
    lines carry the task's arguments there, which must not reach a log line.
    """

    def __init__(self) -> None:
        self._adder = structlog.stdlib.ExtraAdder()

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        record = event_dict.get("_record")
        if record is None or not record.name.startswith("celery_kit"):
            return event_dict
        event_dict = self._adder(logger, name, event_dict)
        event_dict.pop("message", None)  # set by Formatter.format(), not an extra
        return event_dict


def wants_json(stream: Any) -> bool:
    """JSON unless ``stream`` is a terminal."""
    return not (hasattr(stream, "isatty") and stream.isatty())


def configure_logging(
    json: bool | None = None,
    level: int | str = "INFO",
    *,
    stream: IO[str] | None = None,
) -> None:
    """Send every log line of the process, stdlib and structlog alike, through structlog.

    structlog's documented set-up for rendering both through the standard library
    (``ProcessorFormatter``); the fields of a standard-library record's ``extra`` become
    fields of its line.

    Args:
        json: JSON lines (``True``), a readable console (``False``), or ``None`` to pick
            JSON unless the stream is a terminal.
        level: root log level.
        stream: where lines go (default: standard error).

    Calling it again replaces the handler it installed; other handlers are left alone.
    """
    stream = stream or sys.stderr
    if json is None:
        json = wants_json(stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        final.append(structlog.processors.dict_tracebacks)
    final.append(renderer(json))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:3], KitExtras(), *shared[3:]], processors=final
    )
    handler = std_logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, HANDLER_MARKER, True)
    root = std_logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, HANDLER_MARKER, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())


def propagate_context(keys: Iterable[str] = DEFAULT_PROPAGATED_KEYS, *, app: Any = None) -> None:
    """Choose which structlog context keys travel from producers to workers.

    With ``app``, that instrumented app's keys change (as ``instrument(app,
    log_context=keys)`` would have chosen them); without, the keys of every instrumented
    app that did not choose its own (``log_context`` not given), now and later.
    """
    from ._instrument import set_propagated_keys

    set_propagated_keys(tuple(keys), app)
