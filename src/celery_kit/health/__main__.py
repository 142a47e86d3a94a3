"""``python -m celery_kit.health``: see :mod:`celery_kit.health._cli`.

Imports only the standard-library CLI module, so the probes stay fast.
"""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
