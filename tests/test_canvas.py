"""Canvases are checked whole in the caller: an invalid one publishes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery, chain, chord, group
from pydantic import BaseModel, ValidationError

from celery_kit import ValidatedTask, validated_task

from .conftest import decoded, published


class Order(BaseModel):
    order_id: int


@pytest.fixture
def tasks(app: Celery) -> dict[str, ValidatedTask]:
    @validated_task(app, shared=False, name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @validated_task(app, shared=False, name="c.parse")
    def parse(doc: dict[str, Any], schema: str) -> str:
        return schema

    @validated_task(app, shared=False, name="c.ship")
    def ship(order: Order) -> None: ...

    @validated_task(app, shared=False, name="c.total")
    def total(values: list[int]) -> int:
        return sum(values)

    return {"add": add, "parse": parse, "ship": ship, "total": total}


def test_a_group_with_one_bad_member_publishes_nothing(app: Celery, tasks: dict[str, ValidatedTask]) -> None:
    add = tasks["add"]
    with pytest.raises(ValidationError):
        group([add.s(1, 2), add.s("one", 2)]).apply_async()
    with pytest.raises(ValidationError):
        group([add.s(1, 2), add.si(1)]).apply_async()  # immutable: complete, y is missing
    assert published(app) == []
    group([add.s(1, 2), add.s(3, 4)]).apply_async()
    assert [decoded(m)[0] for m in published(app)] == [[1, 2], [3, 4]]


def test_a_chain_is_checked_before_its_first_step_is_published(
    app: Celery, tasks: dict[str, ValidatedTask]
) -> None:
    add, parse, ship = tasks["add"], tasks["parse"], tasks["ship"]
    with pytest.raises(ValidationError):
        chain(add.s(1, 2), add.si("bad", []))
    with pytest.raises(ValidationError, match="y"):
        chain(add.s(1, 2), add.s()).apply_async()  # the step gets x only: y is missing
    with pytest.raises(ValidationError):
        chain(add.s(1, 2), ship.s(order_id=3)).apply_async()  # a payload and a previous result
    assert published(app) == []
    # A step that gets the previous result in front of its own arguments is fine.
    chain(add.s(1, 2), add.s(10), parse.s("orders")).apply_async()
    (first,) = published(app)
    args, _, embed = decoded(first)
    assert args == [1, 2]
    assert [step["task"] for step in embed["chain"]] == ["c.parse", "c.add"]


def test_a_chord_body_and_a_callback_are_checked(app: Celery, tasks: dict[str, ValidatedTask]) -> None:
    add, total = tasks["add"], tasks["total"]
    app.conf.result_backend = "cache+memory://"
    with pytest.raises(ValidationError):
        chord([add.s(1, 2), add.s(3, 4)], total.s("extra")).apply_async()
    with pytest.raises(ValidationError):
        add.apply_async((1, 2), link=add.s("x", 1))
    assert published(app) == []
    add.apply_async((1, 2), link=add.s(1))
    assert len(published(app)) == 1


def test_only_what_no_completion_can_fix_is_refused_at_creation(tasks: dict[str, ValidatedTask]) -> None:
    add, parse, ship = tasks["add"], tasks["parse"], tasks["ship"]
    parse.s("orders")  # doc comes from a chain: fine
    add.s(1)  # y may come later
    add.s(y=2)
    ship.s(order_id=1)
    ship.s()
    with pytest.raises(ValidationError):
        add.s(1, 2, 3)  # too many, whatever comes in front
    with pytest.raises(ValidationError):
        add.s(y="two")
    with pytest.raises(ValidationError):
        ship.s(order_id="x")
    with pytest.raises(TypeError):  # an immutable signature is complete: Celery's TypeError too
        add.si(1)


def test_undeclared_tasks_keep_celerys_canvas(app: Celery) -> None:
    @app.task(shared=False, base=ValidatedTask, name="c.plain")
    def plain(x, y):  # type: ignore[no-untyped-def]
        return x

    group([plain.s({1}, 2), plain.s("a", "b")])  # nothing declared: nothing refused
    chain(plain.s(1, 2), plain.s(3)).apply_async()
    assert len(published(app)) == 1
