"""A worker process's logging, taken over from Celery: worker and beat processes only.

Celery sends ``setup_logging`` (and ``celeryd_init``) in worker and beat processes, never
in a producer; the kit's receivers (``_lifecycle.py``) call :func:`take_over` there, for
an app instrumented with ``logging=True``. It:

* routes every standard-library record through :func:`~celery_kit.logging.configure_logging`;
* gives the logging observer a structlog logger configured as structlog's docs recommend
  for production -- ``make_filtering_bound_logger``, ``JSONRenderer`` with orjson as its
  serializer, ``cache_logger_on_first_use``, ``merge_contextvars`` -- writing the same
  stream, so each lifecycle line skips the standard library's round trip;
* quiets Celery's own per-task ``received``/``succeeded`` lines (``celery.app.trace`` and
  ``celery.worker.strategy`` at ``WARNING``), which the kit's lines replace -- the first
  one in the main process, whose consumer loop is the throughput bottleneck. Celery's
  failure lines, with tracebacks, are errors and stay;
* routes warnings, the banner and ``print()`` output into logging
  (:mod:`celery_kit._worker_output`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from celery.utils.log import LoggingProxy

from . import _worker_output
from ._log_observer import TASKS_LOGGER, LoggingObserver
from .logging import configure_logging, renderer, wants_json

__all__ = ["QUIETED_LOGGERS", "take_over"]

#: Celery's per-task lines, which the kit's own lines replace in a worker.
QUIETED_LOGGERS = ("celery.app.trace", "celery.worker.strategy")


def _stream(logfile: str | None) -> TextIO:
    if logfile:
        return open(logfile, "a", encoding="utf-8", buffering=1)
    if isinstance(sys.stderr, LoggingProxy) and sys.__stderr__ is not None:
        # Standard error is already redirected into logging (worker_redirect_stdouts):
        # writing log lines there would feed them back into logging.
        return sys.__stderr__
    return sys.stderr


def take_over(
    observers: Iterable[LoggingObserver],
    *,
    json: bool | None,
    loglevel: int | str | None,
    logfile: str | None = None,
) -> None:
    """Configure this worker (or beat) process's logging once, for the kit's observers."""
    stream = _stream(logfile)
    if json is None:
        json = wants_json(stream)
    level = loglevel or "INFO"
    configure_logging(json=json, level=level, stream=stream)
    numeric = level if isinstance(level, int) else logging.getLevelName(str(level).upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer(json))
    lines = structlog.wrap_logger(
        structlog.WriteLogger(stream),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            numeric if isinstance(numeric, int) else logging.INFO
        ),
        cache_logger_on_first_use=True,
    ).bind(logger=TASKS_LOGGER)
    for observer in observers:
        observer.lines = lines
    for name in QUIETED_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _worker_output.install(json=json)
