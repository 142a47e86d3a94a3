"""Masking a payload's secret values out of the exception a task raised.

Redaction by field name (``_redact.py``, ``alerts.redact``) cannot see a secret that task
code pasted into an error -- ``ValueError(f"bad token {payload.token.get_secret_value()}")``
-- and from there Celery and the kit copy the text into the worker log, the alert, the
result backend (``exc.args`` and the formatted traceback) and the ``task-failed`` event.
On the worker the kit holds the validated payload, so it knows the exact secret values
(every :class:`~pydantic.SecretStr` and :class:`~pydantic.SecretBytes` in it, nested
models and containers included). :func:`mask_secret_values` replaces each of them in the
exception before it leaves the task, so every copy made afterwards is masked -- the
exception's ``args``, its string attributes (for classes whose ``__str__`` reads them),
its notes, and the same for the exceptions it was raised from or during.

Values shorter than :data:`MIN_SECRET_LENGTH` are left alone: masking every ``"1"`` in an
error message would hide what went wrong and protect nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = ["MASK", "MIN_SECRET_LENGTH", "mask_secret_values", "secret_values"]

MASK = "**********"
#: Shorter secret values are not masked (see the module docstring).
MIN_SECRET_LENGTH = 4
#: How deep a payload is searched, and how long an exception chain is masked.
_MAX_DEPTH = 32


def secret_values(payload: Any) -> list[str]:
    """Every secret value in ``payload``, longest first (so no secret is masked by part)."""
    found = {value for value in _secrets(payload, 0) if len(value) >= MIN_SECRET_LENGTH}
    return sorted(found, key=len, reverse=True)


def _secrets(value: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, SecretBytes):
        raw = value.get_secret_value()
        yield raw.decode("utf-8", "replace")
        yield repr(raw)[2:-1]  # as it reads inside a repr() of the bytes
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets(getattr(value, name, None), depth + 1)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _secrets(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _secrets(item, depth + 1)


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    # Exact types only: a subclass (a named tuple) may not rebuild from its items.
    if type(value) is list or type(value) is tuple:
        return type(value)(_mask(item, secrets) for item in value)
    if type(value) is dict:
        return {key: _mask(item, secrets) for key, item in value.items()}
    return value


def mask_secret_values(exc: BaseException, payload: Any) -> None:
    """Replace ``payload``'s secret values in ``exc`` (and its chain) by ``**********``, in place.

    In place, because Celery records *this* exception object: its class, its ``args``
    and a traceback formatted from it.
    """
    secrets = secret_values(payload)
    if not secrets:
        return
    seen: set[int] = set()
    current: BaseException | None = exc
    pending: list[BaseException] = []
    while current is not None and len(seen) < _MAX_DEPTH:
        if id(current) not in seen:
            seen.add(id(current))
            _mask_one(current, secrets)
            pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        current = pending.pop() if pending else None


def _mask_one(exc: BaseException, secrets: list[str]) -> None:
    try:
        exc.args = tuple(_mask(arg, secrets) for arg in exc.args)
        for name, value in list(vars(exc).items()):
            if isinstance(value, (str, list, tuple, dict)):
                masked = _mask(value, secrets)
                if masked != value:
                    setattr(exc, name, masked)
    except (AttributeError, TypeError):  # a read-only attribute, a class without __dict__
        pass
