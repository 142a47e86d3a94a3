"""The Celery app: configured from a celery_kit preset, instrumented once.

``instrument(app)`` wires, for workers and producers alike:

* structured JSON logs with the task's ids bound to every line;
* Prometheus metrics, served by each worker on ``CELERY_KIT_METRICS_PORT`` (9808);
* alerts on final failures, timeouts and invalid payloads, to ``CELERY_KIT_ALERT_SINKS``
  (a Slack/webhook URL, ``smtp://...``; logged only when unset) -- the template's
  ``send_alert(...)`` in every task, done once;
* the heartbeat the health probes read (``python -m celery_kit.health worker live``),
  written to ``CELERY_KIT_HEALTH_FILE`` (beat: ``CELERY_KIT_HEALTH_BEAT_FILE``).
"""

from __future__ import annotations

from celery import Celery
from celery_kit import instrument

import celeryconfig

__all__ = ["app"]

app = Celery("email-worker", include=["app.tasks.email", "app.tasks.reports"])
app.config_from_object(celeryconfig.config)
instrumentation = instrument(app)
