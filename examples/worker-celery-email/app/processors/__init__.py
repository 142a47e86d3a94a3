"""Business logic the tasks call: no Celery in here, so it is usable (and testable) alone."""
