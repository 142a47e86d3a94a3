"""What a worker writes besides log records, made log records when its logs are JSON lines.

Celery prints its start-up banner (the ``[config]``, ``[queues]`` and ``[tasks]`` blocks)
straight to the terminal, and Python prints warnings to standard error: in a worker whose
logs are JSON, those plain lines break every log pipeline that parses one JSON object a
line. When the kit takes over a worker's logging (Celery's ``setup_logging`` signal, so in
worker and beat processes only, never in a producer):

* Python warnings go through logging (:func:`logging.captureWarnings`), as one
  ``py.warnings`` record each;
* in JSON mode, the banner is replaced by one ``worker starting`` record carrying the same
  facts as fields, and ``print()`` output is redirected into logging as Celery does without
  a custom logging setup (``worker_redirect_stdouts``, ``worker_redirect_stdouts_level``).

What Celery still writes past logging (a few shutdown notices) is listed in
docs/observability.md.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from ._redact import redact_url

__all__ = ["install", "log_banner"]

log: Any = structlog.get_logger("celery_kit.worker")


def _pool_name(pool: Any) -> str:
    """The pool as the banner names it: its module (``celery.concurrency.prefork``)."""
    return pool if isinstance(pool, str) else str(getattr(pool, "__module__", pool))


def _log_banner(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    """``celeryd_after_setup``: log the banner's facts as one record; Celery prints no banner.

    The signal comes right before Celery prints the banner unless the worker is quiet
    (``celery worker --quiet``), the option this sets.
    """
    if instance is None:
        return
    app = instance.app
    with_builtins = (getattr(instance, "loglevel", None) or logging.INFO) <= logging.DEBUG
    log.info(
        "worker starting",
        hostname=getattr(instance, "hostname", sender),
        app=app.main,
        broker=redact_url(app.connection_for_write().as_uri()),
        results=redact_url(app.backend.as_uri()) if app.conf.result_backend else None,
        pool=_pool_name(getattr(instance, "pool_cls", None)),
        concurrency=getattr(instance, "concurrency", None),
        queues=sorted(app.amqp.queues.consume_from),
        tasks=sorted(name for name in app.tasks if with_builtins or not name.startswith("celery.")),
    )
    instance.quiet = True
    if app.conf.worker_redirect_stdouts:
        # Celery skips its own redirect when logging is set up by a receiver, as here.
        app.log.redirect_stdouts(app.conf.worker_redirect_stdouts_level)


_banner_as_record = False


def install(*, json: bool) -> None:
    """Called when the kit takes a worker (or beat) process's logging over."""
    global _banner_as_record
    logging.captureWarnings(True)
    _banner_as_record = json


def log_banner(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    """``celeryd_after_setup`` (connected by the bridge): the banner as one record, in JSON mode."""
    if _banner_as_record:
        _log_banner(sender, instance, conf)
