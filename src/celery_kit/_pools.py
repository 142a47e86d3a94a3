"""Which pool a worker runs: time limits and metrics modes depend on it."""

from __future__ import annotations

from typing import Any

__all__ = ["pool_name"]


def pool_name(worker: Any) -> str:
    """``prefork``, ``solo``, ``threads``, ``gevent``, ``eventlet`` or the pool module's name.

    Works from the ``worker_init`` signal on, when ``pool_cls`` may still be an alias.
    """
    from celery.concurrency import get_implementation

    try:
        pool = get_implementation(worker.pool_cls)
    except Exception:  # an unknown pool fails later, with Celery's own message
        return str(worker.pool_cls)
    module = str(getattr(pool, "__module__", ""))
    return module.rsplit(".", 1)[-1]
