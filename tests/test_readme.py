"""The README's quick start runs as printed (on the in-memory broker instead of Redis)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from .conftest import decoded, published

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    section = README.read_text().split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its quick start block"
    return match.group(1)


def test_quick_start_is_short() -> None:
    assert len(quick_start().splitlines()) <= 25


def test_quick_start_validates_in_the_caller_and_publishes_the_valid_call_only() -> None:
    code = quick_start()
    assert code.count('"redis://localhost:6379/0"') == 1
    code = code.replace(
        '"redis://localhost:6379/0", "redis://localhost:6379/1"', '"memory://", "cache+memory://"'
    )
    *body, last = code.rstrip().splitlines()
    namespace: dict[str, Any] = {"__name__": "readme_quickstart"}
    exec(compile("\n".join(body), str(README), "exec", dont_inherit=True), namespace)
    app = namespace["app"]
    with pytest.raises(ValidationError, match="to"):
        exec(compile(last, str(README), "exec", dont_inherit=True), namespace)
    # kombu's memory transport is one broker per process: what other tests left in the
    # default queue is not this module's.
    messages = [m for m in published(app) if m.headers["task"].startswith("readme_quickstart.")]
    assert [m.headers["task"] for m in messages] == [namespace["send_email"].name]
    assert decoded(messages[0])[0] == [{"to": "ada@example.com", "subject": "Hi", "body": ""}]
    app.close()
