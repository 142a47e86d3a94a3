"""Dead letters: every message the kit gives up on, kept, inspectable and replayable.

``instrument(app, dead_letters=True)`` (or the ``celery_kit_dead_letters`` setting, on in
``presets.production()`` and ``presets.reliable()``) keeps, on the app's own broker:

* each kit task's final failure (retries exhausted, permanent or non-retriable error, a
  final time limit, an invalid payload);
* each task whose pool process was lost, when the message will not be redelivered;
* each message the worker's guard refused (not JSON, content type refused, unknown task,
  invalid envelope), with its raw body and headers.

:class:`DeadLetterStore` reads and replays them (``celery -A proj kit dlq ...`` is the
same, from the command line)::

    store = DeadLetterStore.for_app(app)
    for entry in store.list(task="email.send"):     # secrets masked
        print(entry.id, entry.reason, entry.exception_message)
    store.replay([entry.id])                         # re-validated, published, confirmed, removed
    store.purge(older_than=timedelta(days=7))

See the dead-letters guide for the guarantees and the storage on Redis and RabbitMQ.
"""

from __future__ import annotations

from ._capture import DeadLetterObserver, install
from ._config import StoreConfig, store_config
from ._entry import REPLAYED_FROM_HEADER, DeadLetter, DeadLetterStats, StoredMessage
from ._store import DeadLetterStore, ReplayResult

__all__ = [
    "REPLAYED_FROM_HEADER",
    "DeadLetter",
    "DeadLetterObserver",
    "DeadLetterStats",
    "DeadLetterStore",
    "ReplayResult",
    "StoreConfig",
    "StoredMessage",
    "install",
    "store_config",
]
