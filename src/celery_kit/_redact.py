"""The one redactor: how secrets are recognised and masked wherever the kit writes.

Logs (``log_payload=True``), alerts (``alert_payload=True``), ``celery kit config`` and
``celery kit schema`` all mask through this module, so a secret is hidden by the same
rules and shows as the same mask everywhere. The rules:

* :class:`~pydantic.SecretStr` / :class:`~pydantic.SecretBytes` values are always masked;
* the value under a name that looks like a secret (:func:`is_secret_name`: ``password``,
  ``api_key``, ``signingKey``, ``SSH_KEY``, ``client_secret``, ...) is masked, whatever it
  is, unless it is empty or a boolean (a flag such as ``use_auth`` holds no secret);
* inside any string, URL passwords (``redis://:pw@host``) and secret-looking query
  parameters (``?token=...``) are masked.

The mask is pydantic's own (``str(SecretStr("x"))``), so a field pydantic already masked
when dumping a model reads the same as one masked here. The original data is never
modified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["MASK", "is_secret_name", "redact", "redact_schema", "redact_url"]

#: What every masked secret reads as: pydantic's mask for ``SecretStr``.
MASK = str(SecretStr("x"))

#: Words that make a name secret when they are one of its parts (``db_password``,
#: ``apiKey``, ``X-Auth-Token``).
_SECRET_PARTS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "passphrase",
        "secret",
        "secrets",
        "token",
        "key",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "signature",
        "sig",
        "private",
        "dsn",
        "sinks",
        "dburi",
    }
)
#: Endings that make a part secret when it is written as one word (``accesstoken``,
#: ``clientsecret``, ``sshkey``).
_SECRET_ENDINGS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "secretkey",
    "accesskey",
    "signingkey",
    "sshkey",
    "encryptionkey",
    "licensekey",
    "credential",
    "credentials",
)
#: Names (normalised to ``lower_snake``) that contain a secret word but hold no secret.
_NOT_SECRET = frozenset(
    {
        "routing_key",
        "task_default_routing_key",
        "key_prefix",
        "result_key_prefix",
        "public_key",
        "primary_key",
        "foreign_key",
        "sort_key",
        "partition_key",
        "idempotency_key",
        "cache_key",
    }
)
#: Splits ``APIKey`` into ``API``/``Key``, ``signingKey`` into ``signing``/``Key``.
_NAME_PART = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s;]*):(?P<password>[^@/\s;]*)@"
)
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z_]*_)?(?:password|passwd|pass|pwd|secret|token|key|apikey|api_key|sig|signature)=)"
    r"(?P<value>[^&;#\s]*)",
    re.IGNORECASE,
)
#: JSON Schema keywords whose values are data (possibly a secret), not schemas.
_SCHEMA_VALUES = frozenset({"default", "const", "example"})
_SCHEMA_VALUE_LISTS = frozenset({"examples", "enum"})
#: JSON Schema keywords whose values map names to schemas that are not field names.
_SCHEMA_NAMED_SCHEMAS = frozenset({"$defs", "definitions", "dependentSchemas"})


def _parts(name: str) -> list[str]:
    return [part.lower() for part in _NAME_PART.findall(name)]


def is_secret_name(name: str) -> bool:
    """True when a setting or field named ``name`` may hold a secret; any case or spelling."""
    parts = _parts(name)
    if "_".join(parts) in _NOT_SECRET:
        return False
    return any(part in _SECRET_PARTS or part.endswith(_SECRET_ENDINGS) for part in parts)


def redact_url(text: str) -> str:
    """``text`` with URL passwords and secret query parameters masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}{MASK}", text)


def _is_secret_value(value: Any) -> bool:
    return not isinstance(value, bool) and value not in (None, "", [], {})


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` with secrets masked; ``name`` is the key it was found under.

    Models are dumped (``mode="json"``) first, so the result is plain JSON-like data.
    """
    if isinstance(value, (SecretStr, SecretBytes)):
        return MASK
    if name and is_secret_name(name) and _is_secret_value(value):
        return MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, BaseModel):
        return redact(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {key: redact(item, str(key)) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    if isinstance(value, (list, set, frozenset)):
        return [redact(item) for item in value]
    return value


def redact_schema(schema: Any, *, secret: bool = False) -> Any:
    """A copy of a JSON Schema with the data it quotes (defaults, examples) masked.

    A property named like a secret, or marked ``writeOnly`` (pydantic's mark for
    ``SecretStr``), has every quoted value masked, in its subschemas too; elsewhere quoted
    values go through :func:`redact`. Property names and the schema's structure are kept.
    """
    if isinstance(schema, list):
        return [redact_schema(item, secret=secret) for item in schema]
    if not isinstance(schema, Mapping):
        return schema
    secret = secret or schema.get("writeOnly") is True
    copy: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword in _SCHEMA_VALUES:
            copy[keyword] = MASK if secret and _is_secret_value(value) else redact(value)
        elif keyword in _SCHEMA_VALUE_LISTS and isinstance(value, list):
            copy[keyword] = [MASK if secret else redact(item) for item in value]
        elif keyword == "properties" and isinstance(value, Mapping):
            copy[keyword] = {
                field: redact_schema(sub, secret=secret or is_secret_name(str(field)))
                for field, sub in value.items()
            }
        elif keyword in _SCHEMA_NAMED_SCHEMAS and isinstance(value, Mapping):
            copy[keyword] = {key: redact_schema(sub, secret=secret) for key, sub in value.items()}
        else:
            copy[keyword] = redact_schema(value, secret=secret)
    return copy
