"""Setting names a preset accepts as overrides: Celery's own, plus ``celery_kit_*``.

Celery reads settings by name and ignores names it does not know, so a typo
(``task_acks_lates=True``) is a setting that silently never applies. Presets refuse any
name that the installed Celery does not define, and suggest the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from celery.app.defaults import _TO_NEW_KEY, SETTING_KEYS

from .._errors import ConfigurationError

__all__ = ["KIT_PREFIX", "is_known_setting", "validate_setting_names"]

#: Settings celery_kit itself reads from ``app.conf`` start with this prefix.
KIT_PREFIX = "celery_kit_"


def is_known_setting(name: str) -> bool:
    """True for a setting the installed Celery defines, or a ``celery_kit_*`` setting."""
    return name in SETTING_KEYS or name.startswith(KIT_PREFIX)


def validate_setting_names(names: Iterable[str]) -> None:
    """Raise :class:`ConfigurationError` naming every unknown setting and its likely fix."""
    problems: list[str] = []
    for name in names:
        if is_known_setting(name):
            continue
        new = _TO_NEW_KEY.get(name) or _TO_NEW_KEY.get(name.upper())
        if new is not None:
            problems.append(f"{name!r} is an old-style (Celery 3) name; use {new!r}")
            continue
        close = difflib.get_close_matches(name, SETTING_KEYS, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(f"{name!r} is not a Celery setting{hint}")
    if problems:
        raise ConfigurationError(
            "unknown setting(s) in preset overrides: "
            + "; ".join(problems)
            + ". Overrides take lowercase Celery setting names (see celery.app.defaults) "
            f"or {KIT_PREFIX}* settings."
        )
