"""Existing Celery tasks under ``task_cls="celery_kit:ValidatedTask"``: what they declare
counts, what they do not declare (or pydantic cannot validate) stays plain Celery."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn

import pytest
from celery import Celery, chain
from kombu.exceptions import EncodeError
from pydantic import BaseModel, ValidationError

from celery_kit import ConfigurationError, PayloadValidationError, validated_task
from celery_kit._request import payload_problem

from .conftest import decoded, published


class Connection:
    """A client object: pydantic has no schema for it."""


class Item(BaseModel):
    n: int


@pytest.fixture
def app(unique: str) -> Iterator[Celery]:
    app = Celery(
        f"dropin-{unique}",
        broker="memory://",
        backend="cache+memory://",
        task_cls="celery_kit:ValidatedTask",
        set_as_current=False,
    )
    app.conf.update(task_default_queue=f"q-{unique}", task_soft_time_limit=5, task_time_limit=10)
    yield app
    app.close()


def test_an_annotation_pydantic_cannot_validate_leaves_a_plain_task_undeclared(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="celery_kit"):

        @app.task(shared=False, name="d.conn")  # type: ignore[untyped-decorator]
        def uses(x: int, conn: Connection | None = None) -> NoReturn:
            raise ValueError(x)

        assert uses.name == "d.conn"  # registers: the worker can start
    assert any("'conn'" in r.getMessage() and "not validated" in r.getMessage() for r in caplog.records)
    assert any("return type" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValidationError):
        uses.delay("not a number")  # what it can validate, it still does
    uses.delay(1)
    assert len(published(app)) == 1

    def register_a_kit_task() -> None:
        @validated_task(app, shared=False, name="d.strict")
        def strict(conn: Connection) -> None: ...

        strict.name  # noqa: B018  -- forces the lazy registration

    with pytest.raises(ConfigurationError, match="pydantic cannot validate parameter 'conn'"):
        register_a_kit_task()  # a kit task is refused at import


def test_a_name_that_does_not_resolve_leaves_a_plain_task_undeclared(app: Celery) -> None:
    namespace: dict[str, Any] = {}
    exec(  # a module whose annotations name a type imported only for type checkers
        "from __future__ import annotations\n"
        "def price(item_id: int, amount: Decimal | None = None):\n"
        "    return item_id, amount\n",
        namespace,
    )
    price = app.task(shared=False, name="d.price")(namespace["price"])
    assert price.apply(("7",)).get() == ("7", None)  # not validated, as in plain Celery
    assert price.payload_schema is not None
    assert not price.payload_schema.validates


def test_loose_annotations_are_checked_but_never_converted(app: Celery) -> None:
    @app.task(shared=False, name="d.loose")  # type: ignore[untyped-decorator]
    def loose(data: dict, items: Iterable[int], extra: Any = None) -> Any:  # type: ignore[type-arg]
        first, second = list(items), list(items)
        return type(data["when"]).__name__, first, second

    when = dt.date(2020, 1, 1)
    assert loose.apply(({"when": when}, [1, 2])).get() == ("date", [1, 2], [1, 2])
    loose.delay({"when": when}, [1])
    ((args, _, _),) = (decoded(m) for m in published(app))
    assert args[0] == {"when": when}  # kombu's JSON carried the date, as without the kit
    with pytest.raises(EncodeError):
        loose.delay({"s": {1, 2}}, [])  # kombu refuses a set, as without the kit
    with pytest.raises(ValidationError):
        loose.delay("not a dict", [])  # the shape is still checked


def test_results_keep_kombus_types_and_models_are_dumped(app: Celery) -> None:
    @app.task(shared=False, name="d.when")  # type: ignore[untyped-decorator]
    def when() -> dt.datetime:
        return dt.datetime(2020, 1, 2, 3, 4, 5)

    @app.task(shared=False, name="d.items")  # type: ignore[untyped-decorator]
    def items() -> list[Item]:
        return [Item(n=1), Item(n=2)]

    assert when.apply().get() == dt.datetime(2020, 1, 2, 3, 4, 5)
    assert items.apply().get() == [{"n": 1}, {"n": 2}]
    assert items() == [Item(n=1), Item(n=2)]  # a direct call returns the function's value


def test_legacy_signatures_celery_accepts(app: Celery) -> None:
    @app.task(shared=False, name="d.optional")  # type: ignore[untyped-decorator]
    def optional(x: int = None) -> Any:  # type: ignore[assignment]  # noqa: RUF013
        return x

    @app.task(shared=False, bind=True, name="d.anything")  # type: ignore[untyped-decorator]
    def anything(*args: Any, **kwargs: Any) -> int:
        return len(args)  # Celery passes the task as args[0]

    @app.task(shared=False, name="d.one")  # type: ignore[untyped-decorator]
    def one() -> int:
        return 1

    @app.task(shared=False, name="d.total")  # type: ignore[untyped-decorator]
    def total(*nums: int) -> int:
        return sum(nums)

    assert optional.apply((None,)).get() is None
    optional.delay(None)
    assert anything.apply((1, 2)).get() == 3
    chain(one.s(), total.s(2, 3)).apply_async()  # the previous result lands in *nums
    one.apply_async(link=total.s(10))
    assert len(published(app)) == 3


def test_eager_validation_errors_are_results_as_celery_records_them(app: Celery) -> None:
    @app.task(shared=False, typing=False, name="d.untyped_check")  # type: ignore[untyped-decorator]
    def loose(x: int) -> int:
        return x

    app.conf.task_always_eager = True
    failed = loose.delay("x")  # typing=False: the caller checks nothing; the task refuses it
    assert failed.state == "FAILURE"
    assert isinstance(failed.result, PayloadValidationError)


def test_an_si_step_travels_in_its_wire_form(app: Celery) -> None:
    @app.task(shared=False, name="d.start")  # type: ignore[untyped-decorator]
    def start() -> None: ...

    @app.task(shared=False, name="d.take")  # type: ignore[untyped-decorator]
    def take(item: Item) -> int:
        return item.n

    chain(start.si(), take.si(Item(n=1))).apply_async()
    start.apply_async(link=take.si(Item(n=2)))
    first, second = (decoded(m) for m in published(app))
    assert first[2]["chain"][0]["args"] == [{"n": 1}]
    assert second[2]["callbacks"][0]["args"] == [{"n": 2}]


def test_serializers_only_a_declared_task_refuses(app: Celery) -> None:
    @app.task(shared=False, name="d.plain")
    def plain(x):  # type: ignore[no-untyped-def]
        return x

    @app.task(shared=False, name="d.typed")  # type: ignore[untyped-decorator]
    def typed(x: int) -> int:
        return x

    plain.apply_async((1,), serializer="yaml")  # safe to decode: Celery's choice
    with pytest.raises(ConfigurationError, match="pickle"):
        plain.apply_async((1,), serializer="pickle")
    with pytest.raises(ConfigurationError, match="JSON only"):
        typed.apply_async((1,), serializer="yaml")
    assert len(published(app)) == 1


def test_a_lone_surrogate_is_refused_in_the_caller_even_without_a_cap(app: Celery) -> None:
    @app.task(shared=False, name="d.uncapped", max_payload_bytes=0)  # type: ignore[untyped-decorator]
    def uncapped(s: str) -> str:
        return s

    with pytest.raises(ValidationError, match="cannot be encoded as JSON"):
        uncapped.delay("x\ud800y")
    assert published(app) == []


def test_the_worker_measures_a_body_that_could_expand_past_the_cap(app: Celery) -> None:
    @app.task(shared=False, name="d.numbers", max_payload_bytes=1000)  # type: ignore[untyped-decorator]
    def numbers(tag: str, values: list[float]) -> None: ...

    numbers.name  # noqa: B018  -- bind it, so the cap is read
    body = b'[["a", [' + b",".join([b"1e5"] * 150) + b"]], {}, {}]"
    assert len(body) < 1000
    args: list[Any] = ["a", [1e5] * 150]
    kwargs: dict[str, Any] = {}
    problem = payload_problem(numbers, body, args, kwargs)  # 1e5 is 100000.0 once encoded
    assert problem is not None
    assert "1000-byte cap" in problem
    assert payload_problem(numbers, b'[["a", [1.0]], {}, {}]', ["a", [1.0]], {}) is None
