"""Masking a payload's secret values out of the exceptions a task raises."""

from __future__ import annotations

import json

import pytest
from celery import Celery
from pydantic import BaseModel, SecretBytes, SecretStr

from celery_kit import validated_task
from celery_kit._secret_values import MASK, mask_secret_values, secret_values


class Inner(BaseModel):
    password: SecretStr


class Payload(BaseModel):
    user: str
    token: SecretStr
    blob: SecretBytes | None = None
    nested: list[Inner] = []
    by_name: dict[str, Inner] = {}


def test_every_secret_value_is_found_nested_and_short_ones_are_left_alone() -> None:
    payload = Payload(
        user="ann",
        token=SecretStr("tok-123456"),
        blob=SecretBytes(b"\x00bin-secret"),
        nested=[Inner(password=SecretStr("pw-in-a-list"))],
        by_name={"x": Inner(password=SecretStr("pw-in-a-dict")), "short": Inner(password=SecretStr("ab"))},
    )
    found = secret_values(payload)
    assert {"tok-123456", "pw-in-a-list", "pw-in-a-dict", "\\x00bin-secret"} <= set(found)
    assert "ab" not in found
    assert "ann" not in found
    assert found == sorted(found, key=len, reverse=True)


class Detailed(Exception):
    """An error whose message is built from an attribute, not from args."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__()

    def __str__(self) -> str:
        return f"failed: {self.detail}"


def test_the_exception_its_chain_attributes_and_notes_are_masked_in_place() -> None:
    payload = Payload(user="ann", token=SecretStr("tok-123456"))
    try:
        try:
            raise Detailed("token tok-123456 refused")
        except Detailed as inner:
            error = ValueError("bad token tok-123456", ["tok-123456"], 3)
            error.add_note("retry with tok-123456")
            raise error from inner
    except ValueError as exc:
        mask_secret_values(exc, payload)
        caught = exc
    assert caught.args == (f"bad token {MASK}", [MASK], 3)
    assert caught.__notes__ == [f"retry with {MASK}"]
    assert str(caught.__cause__) == f"failed: token {MASK} refused"


def test_a_payload_without_secrets_changes_nothing() -> None:
    exc = ValueError("ann is not allowed")
    mask_secret_values(exc, {"user": "ann"})
    assert exc.args == ("ann is not allowed",)


def test_a_failing_task_stores_and_reports_its_error_masked(app: Celery) -> None:
    """Through Celery's tracer (an eager run stores nothing; the result is its return)."""

    @validated_task(app, shared=False, name="s.leaky")
    def leaky(payload: Payload) -> None:
        raise PermissionError(f"token {payload.token.get_secret_value()} expired")

    result = leaky.apply(kwargs={"user": "ann", "token": "tok-123456"})
    assert result.state == "FAILURE"
    assert str(result.result) == f"token {MASK} expired"
    assert "tok-123456" not in (result.traceback or "")
    assert "tok-123456" not in json.dumps(result.result.args)
    with pytest.raises(PermissionError, match=r"\*{10}"):
        result.get()
