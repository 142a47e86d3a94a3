"""PayloadSchema: the function signature as the payload schema."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr, ValidationError

from celery_kit import ConfigurationError, PayloadTooLargeError, PayloadValidationError
from celery_kit._payload import PayloadSchema, payload_validation_error


class Email(BaseModel):
    to: str
    subject: str
    body: str = ""


class Login(BaseModel):
    user: str
    password: SecretStr


def single(payload: Email) -> Email:
    return payload


def many(user_id: int, tags: list[str], when: date | None = None) -> dict[str, Any]:
    return {"user_id": user_id, "tags": tags, "when": when}


def posonly(a: int, /, b: int, *rest: int, c: int = 0, **extra: float) -> None:
    return None


def test_single_model_accepts_model_mapping_fields_and_parameter_name() -> None:
    schema = PayloadSchema(single, bound=False)
    model = Email(to="a@b.c", subject="hi")
    forms: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((model,), {}),
        (({"to": "a@b.c", "subject": "hi"},), {}),
        ((), {"to": "a@b.c", "subject": "hi"}),
        ((), {"payload": {"to": "a@b.c", "subject": "hi"}}),
        ((), {"payload": model}),
    ]
    for args, kwargs in forms:
        call = schema.validate(args, kwargs)
        assert call.args == (model,)
        assert call.payload == model
        assert schema.to_wire(args, kwargs) == (({"to": "a@b.c", "subject": "hi", "body": ""},), {})


def test_single_model_rejects_extra_positionals_and_mixed_forms() -> None:
    schema = PayloadSchema(single, bound=False)
    with pytest.raises(ValidationError, match="Unexpected positional argument"):
        schema.validate(({"to": "x", "subject": "y"}, 1), {})
    with pytest.raises(ValidationError, match="Unexpected keyword argument"):
        schema.validate(({"to": "x", "subject": "y"},), {"body": "z"})


class Wrapper(BaseModel):
    payload: str


def wrapped(payload: Wrapper) -> None: ...


def test_parameter_named_like_a_field_is_read_as_the_field() -> None:
    schema = PayloadSchema(wrapped, bound=False)
    assert schema.validate((), {"payload": "x"}).payload == Wrapper(payload="x")


def test_any_signature_is_validated_and_keeps_the_callers_shape() -> None:
    schema = PayloadSchema(many, bound=False)
    call = schema.validate(("5",), {"tags": ("a", "b"), "when": "2026-01-02"})
    assert call.args == (5,)
    assert call.kwargs == {"tags": ["a", "b"], "when": date(2026, 1, 2)}
    assert call.payload == {"user_id": 5, "tags": ["a", "b"], "when": date(2026, 1, 2)}
    assert schema.to_wire(("5",), {"tags": ["a"]}) == ((5,), {"tags": ["a"]})
    assert schema.to_wire((5, ["a"], date(2026, 1, 2)), {}) == ((5, ["a"], "2026-01-02"), {})
    assert schema.to_wire((), {"user_id": "5", "tags": []}) == ((), {"user_id": 5, "tags": []})
    with pytest.raises(ValidationError) as caught:
        schema.validate((), {"user_id": "x", "unknown": 1})
    assert {(e["type"], e["loc"]) for e in caught.value.errors()} == {
        ("int_parsing", ("user_id",)),
        ("missing", ("tags",)),
        ("extra_forbidden", ("unknown",)),
    }
    assert isinstance(caught.value, TypeError)  # a missing argument is Python's TypeError too
    with pytest.raises(ValidationError) as value_only:
        schema.validate(("x", []), {})
    assert not isinstance(value_only.value, TypeError)  # a wrong value is not


def untyped(a, b=None, *rest, **extra):  # type: ignore[no-untyped-def]
    return a


def partly(when: date, what, *, how: Any = None):  # type: ignore[no-untyped-def]
    return when


def test_what_the_signature_does_not_declare_travels_untouched() -> None:
    schema = PayloadSchema(untyped, bound=False)
    assert not schema.validates
    value, stamp = {1, 2}, date(2026, 1, 2)
    wire_args, wire_kwargs = schema.to_wire((value, stamp, 3), {"k": stamp})
    assert wire_args[0] is value
    assert wire_args[1] is stamp
    assert wire_kwargs == {"k": stamp}
    assert schema.validate((value,), {}).args == (value,)

    part = PayloadSchema(partly, bound=False)
    assert part.validates
    wire_args, wire_kwargs = part.to_wire(("2026-01-02", stamp), {"how": (1, 2)})
    assert wire_args == ("2026-01-02", stamp)  # declared: dumped; undeclared: as given
    assert wire_kwargs["how"] == (1, 2)
    call = part.validate(wire_args, wire_kwargs)
    assert call.args == (stamp, stamp)


def test_results_that_are_not_declared_are_not_converted() -> None:
    schema = PayloadSchema(untyped, bound=False)
    assert schema.dump_result((1, 2)) == (1, 2)
    assert schema.dump_result({1}) == {1}
    assert schema.dump_result(Email(to="a", subject="b")) == {"to": "a", "subject": "b", "body": ""}

    def dated() -> date:
        return date(2026, 1, 2)

    assert PayloadSchema(dated, bound=False).dump_result(date(2026, 1, 2)) == date(2026, 1, 2)


def test_binding_follows_python() -> None:
    def fn(foo: int, /, bar: int, **extra: int) -> tuple[int, int, dict[str, int]]:
        return foo, bar, extra

    schema = PayloadSchema(fn, bound=False)
    # Python: foo=10 is not the positional-only foo; it goes to **extra.
    assert fn(1, foo=10, bar=20) == (1, 20, {"foo": 10})
    call = schema.validate((1,), {"foo": "10", "bar": "20"})
    assert (call.args, call.kwargs) == ((1,), {"bar": 20, "foo": 10})
    assert schema.to_wire((1,), {"foo": 10, "bar": 20}) == ((1,), {"bar": 20, "foo": 10})


def test_run_signature_is_the_functions() -> None:
    import inspect

    assert list(PayloadSchema(many, bound=False).run_signature().parameters)[1:] == [
        "user_id",
        "tags",
        "when",
    ]

    def bound_fn(self: object, n: int) -> None: ...

    assert list(PayloadSchema(bound_fn, bound=True).run_signature().parameters) == ["self", "n"]
    assert inspect.signature(many) == PayloadSchema(many, bound=False).signature


def test_partial_signatures_are_refused_only_when_no_completion_fits() -> None:
    schema = PayloadSchema(many, bound=False)
    schema.check_partial((), {}, prepended=None, complete=False)  # everything may come later
    schema.check_partial((["a"],), {}, prepended=None, complete=False)  # user_id from a chain
    with pytest.raises(ValidationError):
        schema.check_partial(("not-a-number", "not-a-list"), {}, prepended=None, complete=False)
    with pytest.raises(ValidationError):
        schema.check_partial((), {"user_id": "x"}, prepended=None, complete=False)
    # A chain step gets exactly one argument in front and nothing else.
    schema.check_partial((["a"],), {}, prepended=1, complete=True)
    with pytest.raises(ValidationError, match="tags"):
        schema.check_partial((), {}, prepended=1, complete=True)
    with pytest.raises(TypeError):
        schema.check_partial((1, [], None), {}, prepended=1, complete=True)  # one too many
    model = PayloadSchema(single, bound=False)
    model.check_partial((), {}, prepended=1, complete=True)  # the payload is the previous result
    with pytest.raises(ValidationError):
        model.check_partial(({"to": "a"},), {}, prepended=1, complete=True)


def test_positional_only_varargs_and_varkw() -> None:
    schema = PayloadSchema(posonly, bound=False)
    call = schema.validate(("1", "2", "3", "4"), {"c": "5", "x": "1.5"})
    assert call.args == (1, 2, 3, 4)
    assert call.kwargs == {"c": 5, "x": 1.5}
    assert schema.to_wire(("1", "2"), {"c": "5"}) == ((1, 2), {"c": 5})
    with pytest.raises(TypeError, match="missing"):  # as in Python: a= goes to **extra
        schema.validate((), {"a": 1, "b": 2})
    with pytest.raises(ValidationError, match="multiple_argument_values"):
        schema.validate((1, 2), {"b": 2})
    with pytest.raises(ValidationError, match="int_parsing"):
        schema.validate((1, 2, "x"), {})
    with pytest.raises(ValidationError, match="float_parsing"):
        schema.validate((1, 2), {"y": "nope"})


def test_too_many_positionals_without_varargs() -> None:
    with pytest.raises(ValidationError, match="Unexpected positional argument"):
        PayloadSchema(many, bound=False).validate((1, [], None, 4), {})


def test_bound_function_skips_the_task_parameter() -> None:
    def fn(self: object, n: int) -> int:
        return n

    assert PayloadSchema(fn, bound=True).validate(("3",), {}).args == (3,)
    with pytest.raises(ConfigurationError, match="first positional parameter"):
        PayloadSchema(lambda *, n: n, bound=True)


def later(item: LaterModel) -> None: ...


class LaterModel(BaseModel):
    n: int


def test_annotations_defined_below_the_function_resolve_on_first_use() -> None:
    schema = PayloadSchema(later, bound=False)
    assert schema.validate(({"n": "1"},), {}).payload == LaterModel(n=1)


def test_unresolvable_annotation_is_a_configuration_error() -> None:
    def fn(item: DoesNotExist) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    schema = PayloadSchema(fn, bound=False)
    with pytest.raises(ConfigurationError, match="DoesNotExist"):
        schema.validate((), {})


def test_results_are_dumped_to_json_and_parsed_back() -> None:
    schema = PayloadSchema(single, bound=False)
    dumped = schema.dump_result(Email(to="a", subject="b"))
    assert dumped == {"to": "a", "subject": "b", "body": ""}
    assert schema.load_result(dumped) == Email(to="a", subject="b")
    assert schema.dump_result([Email(to="a", subject="b")]) == [dumped]
    assert schema.dump_result((Email(to="a", subject="b"), 1)) == (dumped, 1)
    assert schema.dump_result({"k": Email(to="a", subject="b")}) == {"k": dumped}
    assert schema.dump_result(date(2026, 1, 2)) == date(2026, 1, 2)  # kombu's JSON carries it
    assert schema.dump_result(3) == 3
    sentinel = object()
    assert schema.dump_result(sentinel) is sentinel  # left to the result serializer to refuse
    assert PayloadSchema(many, bound=False).load_result({"a": 1}) == {"a": 1}


def test_size_cap() -> None:
    schema = PayloadSchema(many, bound=False)
    args, kwargs = schema.to_wire((1, ["x" * 100]), {})
    schema.check_size(args, kwargs, 1000)
    schema.check_size(args, kwargs, 0)  # disabled
    with pytest.raises(PayloadTooLargeError, match="Pass a reference instead") as caught:
        schema.check_size(args, kwargs, 50)
    assert caught.value.size > 100
    assert caught.value.limit == 50


def test_worker_error_is_json_safe_and_keeps_secrets_out() -> None:
    schema = PayloadSchema(lambda login: None, bound=False)
    with pytest.raises(ValidationError) as caught:
        PayloadSchema(_login, bound=False).validate((), {"user": 1, "password": 123456789})
    error = payload_validation_error(caught.value, "app.login")
    assert isinstance(error, PayloadValidationError)
    assert "123456789" not in json.dumps(error.args)
    rebuilt = PayloadValidationError(*json.loads(json.dumps(error.args)))
    assert rebuilt.errors == error.errors
    assert rebuilt.task_name == "app.login"
    assert "user" in str(rebuilt)
    assert schema.validate((1,), {}).args == (1,)


def _login(payload: Login) -> None: ...


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
)
def test_fuzzed_input_is_accepted_or_a_validation_error(args: list[Any], kwargs: dict[str, Any]) -> None:
    for fn in (single, many, posonly):
        schema = PayloadSchema(fn, bound=False)
        try:
            wire_args, wire_kwargs = schema.to_wire(args, kwargs)
        except ValidationError:
            continue
        # Whatever is accepted is plain JSON and validates again on the worker side.
        decoded = json.loads(json.dumps([wire_args, wire_kwargs], allow_nan=True))
        schema.validate(decoded[0], decoded[1])


class Credentials(BaseModel):
    user: str
    password: SecretStr
    token: bytes = b""


def with_secret(creds: Credentials) -> None: ...


def with_secret_args(user: str, api_key: SecretStr, *, extra: list[SecretStr] | None = None) -> None: ...


def test_secrets_travel_with_their_real_value_and_stay_masked_elsewhere() -> None:
    schema = PayloadSchema(with_secret, bound=False)
    assert schema.has_secrets
    (wire,), _ = schema.to_wire((), {"user": "ada", "password": "hunter2"})
    assert wire == {"user": "ada", "password": "hunter2", "token": ""}
    received = schema.validate(json.loads(json.dumps([wire]))[0:1], {}).payload
    assert received.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(received)
    assert "hunter2" not in json.dumps(schema.dump_result(received))

    many_schema = PayloadSchema(with_secret_args, bound=False)
    args, kwargs = many_schema.to_wire(("ada", "k-1"), {"extra": ["k-2"]})
    assert (args, kwargs) == (("ada", "k-1"), {"extra": ["k-2"]})
    assert not PayloadSchema(single, bound=False).has_secrets
