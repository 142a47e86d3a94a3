"""Masking secrets out of configuration before it is printed or logged.

Applied to anything the kit shows humans (``celery kit config``): passwords in URLs,
:class:`~pydantic.SecretStr` values, secret-looking query parameters, and the values of
settings named like a password, token, secret or key. The original mapping is never
modified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretBytes, SecretStr

__all__ = ["MASK", "is_secret_name", "redact", "redact_url"]

MASK = "********"
_SECRET_PARTS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "signature",
        "private",
        "sinks",
        "dburi",
    }
)
#: Names that contain ``key`` but hold no secret.
_NOT_SECRET = frozenset({"routing_key", "task_default_routing_key", "key_prefix", "result_key_prefix"})
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s;]*):(?P<password>[^@/\s;]*)@"
)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z_]*_)?(?:password|passwd|pass|pwd|secret|token|key|apikey|api_key|sig|signature)=)"
    r"(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """True when a setting or field named ``name`` may hold a secret."""
    lowered = name.lower()
    if lowered in _NOT_SECRET:
        return False
    return any(part in _SECRET_PARTS for part in re.split(r"[_\-.\s]+", lowered))


def redact_url(text: str) -> str:
    """``text`` with URL passwords and secret query parameters replaced by ``********``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` with secrets masked; ``name`` is the key it was found under."""
    if isinstance(value, (SecretStr, SecretBytes)):
        return MASK
    if name and is_secret_name(name) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    if isinstance(value, (list, set, frozenset)):
        return [redact(item) for item in value]
    return value
