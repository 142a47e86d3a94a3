"""What ``list`` and ``show`` display: an entry with its secrets masked by the kit's redactor.

The stored body keeps the real values (a replay must send them); what people read is
masked twice over: every value the task's payload model declares secret (``SecretStr``,
``SecretBytes``, nested ones too) is replaced wherever it appears in the body, and then
the one redactor (``_redact.redact``) masks values under secret-looking names, URL
passwords and secret query parameters -- in the body, the headers and the error message.
"""

from __future__ import annotations

import json
from typing import Any

from .._redact import MASK, redact, redact_url
from .._secret_values import secret_values
from ._entry import DeadLetter

__all__ = ["mask_entry"]


def _declared_secrets(app: Any, entry: DeadLetter, args: Any, kwargs: Any) -> list[str]:
    task = app.tasks.get(entry.task_name) if app is not None else None
    schema = getattr(task, "payload_schema", None)
    if schema is None or not isinstance(args, list) or not isinstance(kwargs, dict):
        return []
    try:
        _, _, payload = schema.validate_call(args, kwargs)
    except Exception:  # no longer valid: the names still tell the redactor what to mask
        return []
    return secret_values(payload)


def _replace(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [_replace(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: _replace(item, secrets) for key, item in value.items()}
    return value


def mask_entry(entry: DeadLetter, app: Any = None) -> DeadLetter:
    message = entry.message
    body_text = message.body
    secrets: list[str] = []
    if message.body_encoding == "utf-8":
        try:
            body = json.loads(message.body)
        except ValueError:
            body_text = redact_url(message.body)
        else:
            if isinstance(body, list) and len(body) == 3:
                secrets = _declared_secrets(app, entry, body[0], body[1])
            body_text = json.dumps(redact(_replace(body, secrets)), sort_keys=False)
    headers = redact(_replace(message.headers, secrets))
    exception_message = entry.exception_message
    if exception_message is not None:
        exception_message = redact_url(_replace(exception_message, secrets))
    masked_message = message.model_copy(
        update={"body": body_text, "headers": headers, "properties": redact(message.properties)}
    )
    return entry.model_copy(update={"message": masked_message, "exception_message": exception_message})
