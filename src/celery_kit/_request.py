"""The worker-side request class of kit tasks (imported by workers only, by name).

Celery 5.7 sends ``task_failure`` from the worker's main process when the hard time limit
kills a pool process, but without the request on the task's stack; 5.5 and 5.6 only mark
the result. For a lost pool process, 5.5 and 5.6 send ``task_failure`` without the request
on the stack too. Reporting both here, first and with the message's own context, covers
every supported version; the bridge reports each attempt once.
"""

from __future__ import annotations

from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.worker.request import Request

from ._bridge import report_main_process_failure

__all__ = ["KitRequest"]


class KitRequest(Request):  # type: ignore[misc]
    def on_timeout(self, soft: bool, timeout: float) -> None:
        # Report before Celery does: Celery 5.7's ``task_failure`` for a hard limit comes
        # without the request on the task's stack (queue, root id and retries would read
        # as empty); this report carries the message's real context and wins the dedupe.
        if not soft:
            report_main_process_failure(self.task, self.id, TimeLimitExceeded(timeout), self._context)
        super().on_timeout(soft, timeout)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        requeued = self.task.acks_late and self.task.reject_on_worker_lost
        if isinstance(exc, TimeLimitExceeded) or (isinstance(exc, WorkerLostError) and not requeued):
            report_main_process_failure(self.task, self.id, exc, self._context)
        super().on_failure(exc_info, send_failed_event, return_ok)
