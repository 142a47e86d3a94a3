"""A worker consumer that survives the broker going away, on every transport.

Celery 5.7's consumer, on a lost broker connection, first ``collect()``\\ s the connection
(which drops its transport) and then ``close()``\\ s it. On Redis, closing the channel a
second time tries to restore the unacknowledged messages through the dropped transport and
raises ``AttributeError: 'NoneType' object has no attribute 'hostname'`` -- not a connection
error, so Celery treats it as *unrecoverable* and the whole worker shuts down instead of
reconnecting. The kit's fault suite (``tests/faults/test_broker_restart.py``) hit this in
two of three Redis restarts under load.

:class:`Consumer` closes the broken connection the same way but treats that error as what
it is -- a connection that is already gone. Nothing is lost by it: the messages the worker
held unacknowledged stay in Redis's ``unacked`` hash and are handed out again after the
``visibility_timeout``, as after any crash. Every preset sets it as ``worker_consumer``;
without a preset, set ``worker_consumer="celery_kit.consumer:Consumer"`` yourself.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

__all__ = ["CONSUMER_PATH", "Consumer"]

#: The ``worker_consumer`` setting that selects :class:`Consumer`.
CONSUMER_PATH = "celery_kit.consumer:Consumer"

logger = logging.getLogger("celery_kit")


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, minus the crash when a lost connection cannot be closed cleanly."""

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        connection = self.connection
        if connection is not None:
            close = connection.close

            def close_lost_connection() -> None:
                try:
                    close()
                except AttributeError as error:  # the transport was collected already
                    logger.warning(
                        "broker connection already released while closing it (%r); its "
                        "unacknowledged messages return after the visibility timeout",
                        error,
                    )

            connection.close = close_lost_connection
        super().on_connection_error_after_connected(exc)
