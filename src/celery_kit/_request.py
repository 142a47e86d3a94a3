"""The worker-side request class of kit tasks (imported by workers only, by name).

Celery 5.7 sends ``task_failure`` from the worker's main process when the hard time limit
kills a pool process; 5.5 and 5.6 only mark the result. Reporting the timeout here as
well covers every supported version; the bridge reports each attempt once.
"""

from __future__ import annotations

from celery.exceptions import TimeLimitExceeded
from celery.worker.request import Request

from ._bridge import report_main_process_failure

__all__ = ["KitRequest"]


class KitRequest(Request):  # type: ignore[misc]
    def on_timeout(self, soft: bool, timeout: float) -> None:
        super().on_timeout(soft, timeout)
        if not soft:
            report_main_process_failure(self.task, self.id, TimeLimitExceeded(timeout), self._context)
