"""A task function's parameters, compiled once into a pydantic validator.

The function's signature *is* the task's schema. :class:`PayloadSchema` is built when the
task class is created and reused for every call, so the task path never builds a
validator, inspects a signature or resolves a type hint.

Two shapes are recognised:

* **single model** -- one parameter annotated with a :class:`pydantic.BaseModel`
  subclass. Callers may pass the model, a mapping, or the model's fields as keyword
  arguments. On the wire it travels as one positional JSON object, the shape a chain
  produces when it feeds the previous task's result into the next task.
* **any other signature** -- every parameter is validated against its annotation
  (``Any`` when unannotated) through one ``TypedDict`` adapter; ``*args`` and
  ``**kwargs`` are validated against their item annotations. On the wire, arguments
  travel by name, except positional-only ones.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import (
    InitErrorDetails,
    PydanticCustomError,
    PydanticSerializationError,
    to_json,
    to_jsonable_python,
)
from typing_extensions import NotRequired, TypedDict

from ._errors import ConfigurationError, PayloadTooLargeError, PayloadValidationError

__all__ = ["BoundPayload", "PayloadSchema", "payload_validation_error"]

_PRIMITIVES = (str, int, float, bool, type(None))
_P = inspect.Parameter


@dataclass(frozen=True, slots=True)
class BoundPayload:
    """Validated arguments, ready to call the task function with."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: What cleanup hooks receive: the model for a single-model task, else the
    #: validated arguments by name.
    payload: Any


def payload_validation_error(exc: ValidationError, task_name: str) -> PayloadValidationError:
    """Turn pydantic's error into the JSON-safe error a worker records.

    Input values are left out of the stored error list: they may hold secrets, and the
    producer already has them.
    """
    errors = json.loads(exc.json(include_url=False, include_input=False))
    fields = ", ".join(".".join(str(p) for p in err["loc"]) or "<payload>" for err in errors)
    message = (
        f"invalid payload for task {task_name!r}: {exc.error_count()} validation "
        f"error(s) at {fields}. The message was acknowledged and will not be retried; "
        "fix the producer, which must send what the task's signature declares."
    )
    return PayloadValidationError(message, errors, task_name)


def _shape_error(title: str, kind: str, loc: tuple[int | str, ...], value: Any) -> ValidationError:
    detail: InitErrorDetails = {"type": kind, "loc": loc, "input": value}
    return ValidationError.from_exception_data(title, [detail])


def _mentions_secrets(adapter: TypeAdapter[Any]) -> bool:
    """Whether values of this type may hold pydantic secrets (``writeOnly`` in the schema)."""
    try:
        schema = adapter.json_schema()
    except Exception:  # a type without a JSON schema: take the path that is always right
        return True
    return '"writeOnly": true' in json.dumps(schema)


def _reveal(value: Any) -> Any:
    """Replace pydantic secrets in python-mode dumped data by their real values."""
    if isinstance(value, dict):
        return {key: _reveal(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reveal(item) for item in value]
    reveal = getattr(value, "get_secret_value", None)
    if reveal is not None and not isinstance(value, type):
        secret = reveal()
        return secret.decode("utf-8") if isinstance(secret, bytes) else _reveal(secret)
    return value


class PayloadSchema:
    """Validator, wire encoder and result codec for one task function.

    Built from the function at task-class creation. Annotations are resolved with
    :func:`typing.get_type_hints`, so ``from __future__ import annotations`` works; a
    name that cannot be resolved yet (a model defined below the task) defers the build
    to the first call instead of failing the import.
    """

    def __init__(self, fun: Callable[..., Any], *, bound: bool, name: str | None = None) -> None:
        self.fun = fun
        self.bound = bound
        self.name: str = name or str(getattr(fun, "__qualname__", repr(fun)))
        self._built = False
        with contextlib.suppress(NameError):  # resolved on first use; see _ensure_built
            self._build()

    # -- building ---------------------------------------------------------------------------

    def _ensure_built(self) -> None:
        if not self._built:
            try:
                self._build()
            except NameError as exc:
                raise ConfigurationError(
                    f"cannot resolve the annotations of task function {self.name!r}: {exc}. "
                    "Define or import every type its signature names at module level."
                ) from exc

    def _build(self) -> None:
        signature = inspect.signature(self.fun)
        hints = typing.get_type_hints(self.fun, include_extras=True)
        params = list(signature.parameters.values())
        if self.bound:
            if not params or params[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
                raise ConfigurationError(
                    f"bound task {self.name!r} must take the task instance as its first "
                    "positional parameter (conventionally `self`)."
                )
            params = params[1:]
        self.params = params
        self.title = f"{self.name} arguments"
        self.return_adapter: TypeAdapter[Any] | None = None
        if "return" in hints and hints["return"] is not type(None):
            self.return_adapter = TypeAdapter(hints["return"])

        self.model: type[BaseModel] | None = None
        if len(params) == 1 and params[0].kind in (
            _P.POSITIONAL_ONLY,
            _P.POSITIONAL_OR_KEYWORD,
            _P.KEYWORD_ONLY,
        ):
            annotation = hints.get(params[0].name)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                self.model = annotation
                self.param_name = params[0].name
                self.keyword_only = params[0].kind is _P.KEYWORD_ONLY
                self.model_fields = frozenset(annotation.model_fields)
                self.model_adapter: TypeAdapter[Any] = TypeAdapter(annotation)
                self.has_secrets = _mentions_secrets(self.model_adapter)
                self._built = True
                return

        self.positional = [p.name for p in params if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)]
        self.positional_only = frozenset(p.name for p in params if p.kind is _P.POSITIONAL_ONLY)
        self.n_positional_only = len(self.positional_only)
        fields: dict[str, Any] = {}
        self.varargs: TypeAdapter[Any] | None = None
        self.varkw: TypeAdapter[Any] | None = None
        for p in params:
            annotation = hints.get(p.name, Any)
            if p.kind is _P.VAR_POSITIONAL:
                self.varargs = TypeAdapter(tuple[annotation, ...])  # type: ignore[valid-type]
            elif p.kind is _P.VAR_KEYWORD:
                self.varkw = TypeAdapter(dict[str, annotation])  # type: ignore[valid-type]
            else:
                fields[p.name] = annotation if p.default is _P.empty else NotRequired[annotation]
        self.argument_names = frozenset(fields)
        arguments = TypedDict(self.title, fields)  # type: ignore[misc]
        arguments.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        self.arguments: TypeAdapter[dict[str, Any]] = TypeAdapter(cast("type[dict[str, Any]]", arguments))
        self.has_secrets = any(
            _mentions_secrets(adapter) for adapter in (self.arguments, self.varargs, self.varkw) if adapter
        )
        self._built = True

    # -- validation -------------------------------------------------------------------------

    def validate(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> BoundPayload:
        """Validate call arguments; raise :class:`pydantic.ValidationError` when they do not fit."""
        return BoundPayload(*self.validate_call(args, kwargs))

    def validate_call(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
        """:meth:`validate` as a plain ``(args, kwargs, payload)`` tuple, for the task path.

        Calls the compiled validators directly (``model_validate()`` and
        ``TypeAdapter.validate_python()`` only forward to them).
        """
        if not self._built:
            self._ensure_built()
        model = self.model
        if model is not None:
            data = args[0] if len(args) == 1 and not kwargs else self._single_input(args, kwargs)
            value = model.__pydantic_validator__.validate_python(data)
            if self.keyword_only:
                return (), {self.param_name: value}, value
            return (value,), {}, value
        data, extra_args, extra_kwargs = self._bind(args, kwargs)
        validated = self.arguments.validator.validate_python(data)
        if extra_args:
            extra_args = self.varargs.validator.validate_python(extra_args)  # type: ignore[union-attr]
        call_args = self._split(validated, extra_args)
        if extra_kwargs:
            validated_extra = self.varkw.validator.validate_python(extra_kwargs)  # type: ignore[union-attr]
            call_kwargs = {**validated, **validated_extra}
        else:
            call_kwargs = validated
        return call_args, call_kwargs, validated

    def to_wire(
        self, args: tuple[Any, ...] | list[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate, then dump to the plain-JSON form that goes on the wire.

        Raises:
            pydantic.ValidationError: the payload does not fit, or cannot be dumped (bytes
                that are not UTF-8 in a JSON field, say).
        """
        try:
            return self._to_wire(args, kwargs)
        except (PydanticSerializationError, UnicodeError) as exc:
            raise self.unencodable(exc) from None

    def _to_wire(
        self, args: tuple[Any, ...] | list[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args = args or ()
        kwargs = kwargs or {}
        if not self._built:
            self._ensure_built()
        model = self.model
        if model is not None:
            data = args[0] if len(args) == 1 and not kwargs else self._single_input(args, kwargs)
            dumped = self._dump(self.model_adapter, model.__pydantic_validator__.validate_python(data))
            if self.keyword_only:
                return (), {self.param_name: dumped}
            return (dumped,), {}
        data, extra_args, extra_kwargs = self._bind(args, kwargs)
        wire = self._dump(self.arguments, self.arguments.validator.validate_python(data))
        if extra_args:
            varargs = self.varargs
            assert varargs is not None  # _bind refuses extra positionals without *args
            extra_args = tuple(self._dump(varargs, varargs.validator.validate_python(extra_args)))
        wire_args = self._split(wire, extra_args)
        if extra_kwargs:
            varkw = self.varkw
            assert varkw is not None  # _bind keeps unknown keywords only with **kwargs
            wire.update(self._dump(varkw, varkw.validator.validate_python(extra_kwargs)))
        return wire_args, wire

    def _dump(self, adapter: TypeAdapter[Any], value: Any) -> Any:
        """JSON-ready data for the wire.

        Pydantic's JSON mode masks ``SecretStr``/``SecretBytes`` as ``'**********'``, which
        would deliver asterisks to the worker; schemas with secrets take a slower path that
        sends the real value (logs, results and stored errors still never show it).
        """
        # ``adapter.serializer.to_python`` is what ``adapter.dump_python`` forwards to.
        if not self.has_secrets:
            return adapter.serializer.to_python(value, mode="json")
        return to_jsonable_python(_reveal(adapter.serializer.to_python(value, mode="python")))

    def check_size(self, wire_args: tuple[Any, ...], wire_kwargs: dict[str, Any], limit: int) -> None:
        """Raise :class:`PayloadTooLargeError` when the JSON payload exceeds ``limit`` bytes.

        Raises:
            pydantic.ValidationError: the payload cannot be encoded as JSON at all (a lone
                surrogate in a string, say), which pydantic's validation lets through.
        """
        if limit > 0:
            try:
                size = len(to_json((wire_args, wire_kwargs)))
            except (PydanticSerializationError, UnicodeError) as exc:
                raise self.unencodable(exc) from None
            if size > limit:
                raise PayloadTooLargeError(self.name, size, limit)

    def unencodable(self, exc: Exception) -> ValidationError:
        """A caller-side ``ValidationError`` for a payload JSON cannot carry.

        The offending value is not quoted: it may be a secret.
        """
        reason = "a string holds a lone surrogate or bytes are not UTF-8"
        if not isinstance(exc, UnicodeError) and "surrogate" not in str(exc).lower():
            reason = type(exc).__name__
        detail: InitErrorDetails = {
            "type": PydanticCustomError(
                "json_unencodable", "payload cannot be encoded as JSON: {reason}", {"reason": reason}
            ),
            "loc": (),
            "input": "<not shown>",
        }
        return ValidationError.from_exception_data(self.title, [detail])

    def masked_reprs(self, wire_args: tuple[Any, ...], wire_kwargs: dict[str, Any]) -> tuple[str, str]:
        """``argsrepr``/``kwargsrepr`` headers with secrets masked.

        Celery shows these (Flower, ``celery inspect``, task events); left to Celery they
        would be the wire payload, which carries secrets in clear for the worker.
        Re-validating the wire form costs a second validation, paid by secret-bearing
        tasks only.
        """
        from celery.utils.saferepr import saferepr

        call_args, call_kwargs, _ = self.validate_call(wire_args, wire_kwargs)
        masked_args = [self.dump_result(value) for value in call_args]
        masked_kwargs = {key: self.dump_result(value) for key, value in call_kwargs.items()}
        return saferepr(masked_args, 1024), saferepr(masked_kwargs, 1024)

    def _single_input(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> Any:
        if args:
            if len(args) > 1:
                raise _shape_error(self.title, "unexpected_positional_argument", (1,), args[1])
            if kwargs:
                key = next(iter(kwargs))
                raise _shape_error(self.title, "unexpected_keyword_argument", (key,), kwargs[key])
            return args[0]
        if len(kwargs) == 1 and self.param_name in kwargs and self.param_name not in self.model_fields:
            return kwargs[self.param_name]
        return kwargs

    def _bind(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[dict[str, Any], tuple[Any, ...], dict[str, Any]]:
        positional = self.positional
        n = len(positional)
        if len(args) > n and self.varargs is None:
            raise _shape_error(self.title, "unexpected_positional_argument", (n,), args[n])
        data = dict(zip(positional, args, strict=False))
        extra_args = tuple(args[n:])
        extra_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in data:
                raise _shape_error(self.title, "multiple_argument_values", (key,), value)
            if key in self.positional_only:
                raise _shape_error(self.title, "unexpected_keyword_argument", (key,), value)
            if self.varkw is not None and key not in self.argument_names:
                extra_kwargs[key] = value
            else:
                data[key] = value
        return data, extra_args, extra_kwargs

    def _split(self, data: dict[str, Any], extra_args: tuple[Any, ...] | list[Any]) -> tuple[Any, ...]:
        """Pop the values that must be passed positionally out of ``data``."""
        if extra_args:
            names = self.positional
        elif self.n_positional_only:
            names = self.positional[: self.n_positional_only]
        else:
            return ()
        taken = []
        for name in names:
            if name not in data:
                break
            taken.append(data.pop(name))
        return (*taken, *extra_args)

    # -- contract ---------------------------------------------------------------------------

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the payload (``"payload"``) and of the result (``"result"``).

        For a single-model task the payload schema is the model's: the one JSON object
        sent as the only positional argument. Otherwise it is an object of the
        arguments by name, as they travel in ``kwargs`` (positional-only ones travel in
        ``args``, in order); ``*args`` items are described
        under ``x-celery-kit-varargs``. ``result`` is ``None`` for an unannotated task.
        """
        self._ensure_built()
        if self.model is not None:
            payload = self.model.model_json_schema()
        else:
            payload = self.arguments.json_schema()
            if self.varkw is not None:
                payload["additionalProperties"] = self.varkw.json_schema().get("additionalProperties", True)
            if self.varargs is not None:
                payload["x-celery-kit-varargs"] = self.varargs.json_schema()
        returns = self.return_adapter
        result = None if returns is None else returns.json_schema(mode="serialization")
        return {"payload": payload, "result": result}

    # -- results ----------------------------------------------------------------------------

    @staticmethod
    def dump_result(value: Any) -> Any:
        """Return value as plain JSON data: models are dumped with ``mode="json"``."""
        if isinstance(value, _PRIMITIVES):
            return value
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        try:
            return to_jsonable_python(value)
        except PydanticSerializationError:
            return value  # let the result serializer report what it cannot encode

    def load_result(self, value: Any) -> Any:
        """Rebuild the typed return value (e.g. the result model) from stored JSON data."""
        self._ensure_built()
        if self.return_adapter is None:
            return value
        return self.return_adapter.validate_python(value)
