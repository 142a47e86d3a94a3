"""A task function's parameters, compiled once into a pydantic validator.

The function's signature *is* the task's schema. :class:`PayloadSchema` is built when the
task class is created and reused for every call, so the task path never builds a
validator, inspects a signature or resolves a type hint.

Two shapes are recognised:

* **single model** -- one parameter annotated with a :class:`pydantic.BaseModel`
  subclass. Callers may pass the model, a mapping, or the model's fields as keyword
  arguments. On the wire it travels as one positional JSON object, the shape a chain
  produces when it feeds the previous task's result into the next task.
* **any other signature** -- arguments bind to parameters exactly as Python binds them,
  and every *declared* parameter (annotated with anything but ``Any``) is validated
  through one ``TypedDict`` adapter and dumped to JSON on the wire. Undeclared
  parameters travel exactly as plain Celery sends them. Positional arguments stay
  positional and keywords stay keywords, so ``Task.retry(args=, kwargs=)`` merges with
  the request's arguments as it does in Celery.

A signature that declares nothing validates nothing: such a task (an existing Celery
task under ``task_cls="celery_kit:ValidatedTask"``) runs exactly as plain Celery runs it.
"""

from __future__ import annotations

import collections.abc
import contextlib
import inspect
import json
import logging
import threading
import typing
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

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

logger = logging.getLogger("celery_kit")

__all__ = ["ArgumentsError", "BoundPayload", "PayloadSchema", "dump_masked", "payload_validation_error"]

_P = inspect.Parameter
_JSON_SCALARS = (str, int, float, bool)
_POSITIONAL = (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD)
#: Error types that say the call's *shape* is wrong (what Python reports as ``TypeError``).
_SHAPE_ERRORS = frozenset(
    {
        "missing",
        "extra_forbidden",
        "unexpected_positional_argument",
        "unexpected_keyword_argument",
        "multiple_argument_values",
    }
)


class ArgumentsError(ValidationError, TypeError):
    """Arguments that do not fit the task's parameters: missing, unknown or doubled ones.

    Both a :class:`pydantic.ValidationError` (what celery_kit raises for a payload that
    does not fit) and a :class:`TypeError` (what Python and Celery's own argument check
    raise for a call of the wrong shape), so ``except TypeError`` handlers written for
    plain Celery keep working.
    """


ArgumentsError.__module__ = "celery_kit"


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


def _shape_error(title: str, kind: str, loc: tuple[int | str, ...], value: Any) -> ArgumentsError:
    detail: InitErrorDetails = {"type": kind, "loc": loc, "input": value}
    return ArgumentsError.from_exception_data(title, [detail])


def _as_arguments_error(exc: ValidationError) -> ValidationError:
    """``exc`` as an :class:`ArgumentsError` when any of its errors is about the call's shape."""
    if isinstance(exc, ArgumentsError):
        return exc
    errors = exc.errors()
    if not any(error["type"] in _SHAPE_ERRORS for error in errors):
        return exc
    return ArgumentsError.from_exception_data(exc.title, cast("list[InitErrorDetails]", errors))


def _declares(annotation: Any) -> bool:
    """Whether an annotation asks for validation: anything but ``Any``, ``object``, a bare
    type variable (or none)."""
    return not (
        annotation is Any or annotation is object or annotation is _P.empty or isinstance(annotation, TypeVar)
    )


#: Abstract iterables: pydantic validates them lazily, into a one-shot iterator.
_LAZY_ORIGINS = frozenset({Iterable, Iterator, Generator, collections.abc.AsyncIterable})


def _is_loose(annotation: Any) -> bool:
    """Whether dumping a value of this type could change what the function receives.

    ``dict``, ``list[Any]``, ``Optional[Any]``, ``Iterable[int]``: the annotation checks
    the value's shape, but leaves (part of) its content undeclared, so the kit validates
    it and then sends and hands on the caller's own value, as plain Celery does, for
    kombu's serializer to encode (a ``date`` inside a ``dict`` stays a ``date``).
    """
    if not _declares(annotation):
        return True
    if isinstance(annotation, type):
        return annotation in _BARE_CONTAINERS
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_loose(typing.get_args(annotation)[0])
    if origin is None:
        return False
    if origin in _LAZY_ORIGINS:
        return True
    return any(
        _is_loose(arg)
        for arg in typing.get_args(annotation)
        if arg is not type(None) and arg is not Ellipsis and not isinstance(arg, list)
    )


_BARE_CONTAINERS = frozenset({dict, list, tuple, set, frozenset, Mapping, collections.abc.Sequence, Iterable})


def _mentions_model(annotation: Any) -> bool:
    """Whether values of this type may hold pydantic models (what a result dump converts)."""
    if isinstance(annotation, type):
        return issubclass(annotation, BaseModel)
    return any(_mentions_model(arg) for arg in typing.get_args(annotation))


def _dump_models(value: Any) -> Any:
    """``value`` with every pydantic model in it (in lists, tuples, dicts) dumped to JSON data.

    Nothing else is converted: a ``datetime`` result stays a ``datetime`` for kombu's
    serializer, as in plain Celery.
    """
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if type(value) is list:
        return [_dump_models(item) for item in value]
    if type(value) is tuple:
        return tuple(_dump_models(item) for item in value)
    if type(value) is dict:
        return {key: _dump_models(item) for key, item in value.items()}
    return value


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


def dump_masked(value: Any) -> Any:
    """JSON-like data with pydantic secrets masked: for what people read (logs, headers, alerts)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    try:
        return to_jsonable_python(value)
    except PydanticSerializationError:
        return value


class PayloadSchema:
    """Validator, wire encoder and result codec for one task function.

    Built from the function at task-class creation. Annotations are resolved with
    :func:`typing.get_type_hints`, so ``from __future__ import annotations`` works; a
    name that cannot be resolved yet (a model defined below the task) defers the build
    to the first call instead of failing the import. With ``validate=False`` (a task
    whose function Celery's own ``pydantic=True`` already wraps) nothing is validated
    or converted: the schema only names the arguments for cleanup hooks.
    """

    def __init__(
        self,
        fun: Callable[..., Any],
        *,
        bound: bool,
        name: str | None = None,
        validate: bool = True,
        lenient: bool = False,
    ) -> None:
        self.fun = fun
        self.bound = bound
        self.name: str = name or str(getattr(fun, "__qualname__", repr(fun)))
        self.title = f"{self.name} arguments"
        self._validate = validate
        #: A task written for plain Celery: an annotation the kit cannot validate (no
        #: pydantic schema, a name that does not resolve) is left undeclared, with a
        #: warning, instead of refusing the task.
        self._lenient = lenient
        #: The function's own signature, as ``task.run`` shows it to ``inspect``.
        self.signature = inspect.signature(fun)
        #: Whether anything is validated; until a deferred build, assume so (it annotates).
        self.validates = validate
        self._built = False
        self._build_lock = threading.Lock()
        with contextlib.suppress(NameError):  # resolved on first use; see _ensure_built
            self._build()

    # -- building ---------------------------------------------------------------------------

    def _ensure_built(self) -> None:
        if self._built:
            return
        with self._build_lock:
            if self._built:
                return
            try:
                self._build()
            except NameError as exc:
                if not self._lenient:
                    raise ConfigurationError(
                        f"cannot resolve the annotations of task function {self.name!r}: {exc}. "
                        "Define or import every type its signature names at module level."
                    ) from exc
                logger.warning(
                    "task %s: its annotations do not resolve (%s); it is not validated. "
                    "Import the types it names at module level to have it validated.",
                    self.name,
                    exc,
                )
                self._build(hints={})

    def _hints(self) -> dict[str, Any]:
        if not self._validate:
            return {}
        return typing.get_type_hints(self.fun, include_extras=True)

    def _usable(self, what: str, annotation: Any) -> bool:
        """Whether pydantic can validate ``annotation``; a task for plain Celery may use
        types it cannot (a client object, a protocol), which are then left undeclared."""
        try:
            TypeAdapter(annotation)
        except Exception as exc:
            if not self._lenient:
                raise ConfigurationError(
                    f"task {self.name!r}: pydantic cannot validate {what} ({annotation!r}): {exc}. "
                    "Annotate it with a type pydantic supports, or with typing.Any."
                ) from exc
            logger.warning(
                "task %s: %s (%r) has no pydantic schema; it is not validated.", self.name, what, annotation
            )
            return False
        return True

    def _build(self, hints: dict[str, Any] | None = None) -> None:
        if hints is None:
            hints = self._hints()
        params = list(self.signature.parameters.values())
        if self.bound and not (params and params[0].kind is _P.VAR_POSITIONAL):
            if not params or params[0].kind not in _POSITIONAL:
                raise ConfigurationError(
                    f"bound task {self.name!r} must take the task instance as its first "
                    "positional parameter (conventionally `self`)."
                )
            params = params[1:]
        self.params = params
        self.return_adapter: TypeAdapter[Any] | None = None
        returns = hints.get("return", Any)
        self.result_has_models = _mentions_model(returns)
        if returns is not type(None) and _declares(returns) and self._usable("its return type", returns):
            self.return_adapter = TypeAdapter(returns)

        self.model: type[BaseModel] | None = None
        if (
            len(params) == 1
            and params[0].kind is not _P.VAR_POSITIONAL
            and params[0].kind is not _P.VAR_KEYWORD
        ):
            annotation = hints.get(params[0].name)
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                self.model = annotation
                self.param_name = params[0].name
                self.keyword_only = params[0].kind is _P.KEYWORD_ONLY
                self.model_fields = frozenset(annotation.model_fields)
                self.model_adapter: TypeAdapter[Any] = TypeAdapter(annotation)
                self.has_secrets = _mentions_secrets(self.model_adapter)
                self.validates = True
                self._built = True
                return

        self.positional = [p.name for p in params if p.kind in _POSITIONAL]
        self.positional_only = frozenset(p.name for p in params if p.kind is _P.POSITIONAL_ONLY)
        annotations: dict[str, Any] = {}
        for p in params:
            annotation = hints.get(p.name, Any)
            if p.default is None and _declares(annotation):
                annotation = annotation | None  # ``x: int = None``: implicitly optional, as PEP 484 had it
            annotations[p.name] = annotation
        try:
            self._compile(params, annotations)
        except Exception:
            # Some annotation has no pydantic schema (a client object, a protocol): find it.
            for p in params:
                if _declares(annotations[p.name]) and not self._usable(
                    f"parameter {p.name!r}", annotations[p.name]
                ):
                    annotations[p.name] = Any
            self._compile(params, annotations)
        self._built = True

    def _compile(self, params: list[inspect.Parameter], annotations: dict[str, Any]) -> None:
        fields: dict[str, Any] = {}
        undeclared: set[str] = set()
        loose: set[str] = set()
        self.varargs: TypeAdapter[Any] | None = None
        self.varkw: TypeAdapter[Any] | None = None
        self.varargs_declared = self.varkw_declared = False
        self.varargs_loose = self.varkw_loose = False
        self.has_varargs = self.has_varkw = False
        for p in params:
            annotation = annotations[p.name]
            if p.kind is _P.VAR_POSITIONAL:
                self.has_varargs = True
                self.varargs_declared = _declares(annotation)
                self.varargs_loose = _is_loose(annotation)
                self.varargs = TypeAdapter(tuple[annotation, ...])  # type: ignore[valid-type]
            elif p.kind is _P.VAR_KEYWORD:
                self.has_varkw = True
                self.varkw_declared = _declares(annotation)
                self.varkw_loose = _is_loose(annotation)
                self.varkw = TypeAdapter(dict[str, annotation])  # type: ignore[valid-type]
            else:
                fields[p.name] = annotation if p.default is _P.empty else NotRequired[annotation]
                if not _declares(annotation):
                    undeclared.add(p.name)
                elif _is_loose(annotation):
                    loose.add(p.name)
        arguments = TypedDict(self.title, fields)  # type: ignore[misc]
        arguments.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        self.arguments: TypeAdapter[dict[str, Any]] = TypeAdapter(cast("type[dict[str, Any]]", arguments))
        self.argument_names = frozenset(fields)
        #: Parameters whose caller's value travels and reaches the function untouched:
        #: undeclared ones (not validated) and loose ones (validated, never converted).
        self.passthrough = frozenset(undeclared | loose)
        self.loose = frozenset(loose)
        self.validates = bool(
            self.argument_names - undeclared or self.varargs_declared or self.varkw_declared
        )
        self.has_secrets = self.validates and any(
            _mentions_secrets(adapter) for adapter in (self.arguments, self.varargs, self.varkw) if adapter
        )

    def run_signature(self) -> inspect.Signature:
        """The signature ``task.run`` shows to :func:`inspect.signature` (``self`` first).

        Celery's ``Task.retry()`` binds the request's arguments to it; a wrapper that
        showed ``(*args, **kwargs)`` would make it merge ``args=``/``kwargs=`` wrongly.
        """
        if self.bound:
            return self.signature
        task = _P("_celery_kit_task", _P.POSITIONAL_ONLY)
        return self.signature.replace(parameters=[task, *self.signature.parameters.values()])

    # -- validation -------------------------------------------------------------------------

    def validate(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> BoundPayload:
        """Validate call arguments; raise :class:`pydantic.ValidationError` when they do not fit."""
        return BoundPayload(*self.validate_call(args, kwargs))

    def validate_call(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
        """:meth:`validate` as a plain ``(args, kwargs, payload)`` tuple, for the task path.

        The call keeps the shape it came in: positional arguments stay positional. Calls
        the compiled validators directly (``model_validate()`` and
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
        if not self.validates:
            return tuple(args), dict(kwargs), None
        data, extra_args, extra_kwargs = self._bind(args, kwargs)
        try:
            validated = self.arguments.validator.validate_python(data)
        except ValidationError as exc:
            raise _as_arguments_error(exc) from None
        for name in self.loose:  # checked, but the function gets the value as it came
            if name in validated:
                validated[name] = data[name]
        if extra_args and self.varargs_declared:
            checked = self.varargs.validator.validate_python(extra_args)  # type: ignore[union-attr]
            extra_args = extra_args if self.varargs_loose else checked
        if extra_kwargs and self.varkw_declared:
            checked = self.varkw.validator.validate_python(extra_kwargs)  # type: ignore[union-attr]
            extra_kwargs = extra_kwargs if self.varkw_loose else checked
        call_args, call_kwargs = self._reshape(validated, len(args), extra_args, extra_kwargs)
        return call_args, call_kwargs, validated

    def to_wire(
        self, args: tuple[Any, ...] | list[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Validate, then dump declared values to the plain-JSON form that goes on the wire.

        Raises:
            pydantic.ValidationError: the payload does not fit, or cannot be dumped (bytes
                that are not UTF-8 in a JSON field, say); an :class:`ArgumentsError` (also
                a ``TypeError``) when the call's shape is wrong.
        """
        try:
            return self._to_wire(args or (), kwargs or {})
        except (PydanticSerializationError, UnicodeError) as exc:
            raise self.unencodable(exc) from None

    def _to_wire(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not self._built:
            self._ensure_built()
        model = self.model
        if model is not None:
            data = args[0] if len(args) == 1 and not kwargs else self._single_input(args, kwargs)
            dumped = self._dump(self.model_adapter, model.__pydantic_validator__.validate_python(data))
            if self.keyword_only:
                return (), {self.param_name: dumped}
            return (dumped,), {}
        if not self.validates:
            return tuple(args), dict(kwargs)
        data, extra_args, extra_kwargs = self._bind(args, kwargs)
        try:
            validated = self.arguments.validator.validate_python(data)
        except ValidationError as exc:
            raise _as_arguments_error(exc) from None
        wire = self._dump(self.arguments, validated, self.passthrough & validated.keys())
        for name in self.passthrough:
            if name in validated:
                wire[name] = data[name]
        if extra_args and self.varargs_declared:
            varargs = self.varargs
            assert varargs is not None
            checked = varargs.validator.validate_python(extra_args)
            if not self.varargs_loose:
                extra_args = tuple(self._dump(varargs, checked))
        if extra_kwargs and self.varkw_declared:
            varkw = self.varkw
            assert varkw is not None
            checked = varkw.validator.validate_python(extra_kwargs)
            if not self.varkw_loose:
                extra_kwargs = self._dump(varkw, checked)
        return self._reshape(wire, len(args), extra_args, extra_kwargs)

    def _dump(
        self, adapter: TypeAdapter[Any], value: Any, exclude: set[str] | frozenset[str] = frozenset()
    ) -> Any:
        """JSON-ready data for the wire.

        Pydantic's JSON mode masks ``SecretStr``/``SecretBytes`` as ``'**********'``, which
        would deliver asterisks to the worker; schemas with secrets take a slower path that
        sends the real value (logs, results and stored errors still never show it).
        """
        # ``adapter.serializer.to_python`` is what ``adapter.dump_python`` forwards to.
        skip = set(exclude) if exclude else None
        if not self.has_secrets:
            return adapter.serializer.to_python(value, mode="json", exclude=skip)
        return to_jsonable_python(_reveal(adapter.serializer.to_python(value, mode="python", exclude=skip)))

    def check_size(self, wire_args: tuple[Any, ...], wire_kwargs: dict[str, Any], limit: int) -> None:
        """Raise :class:`PayloadTooLargeError` when the JSON payload exceeds ``limit`` bytes
        (``0``: no cap; the payload must still be encodable, as the worker checks).

        Raises:
            pydantic.ValidationError: the payload cannot be encoded as JSON at all (a lone
                surrogate in a string, say), which pydantic's validation lets through.
        """
        try:
            size = len(to_json((wire_args, wire_kwargs)))
        except (PydanticSerializationError, UnicodeError) as exc:
            if not isinstance(exc, UnicodeError) and "surrogate" not in str(exc).lower():
                return  # a type only the message serializer knows (kombu's); it decides
            raise self.unencodable(exc) from None
        if 0 < limit < size:
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
        masked_args = [dump_masked(value) for value in call_args]
        masked_kwargs = {key: dump_masked(value) for key, value in call_kwargs.items()}
        return saferepr(masked_args, 1024), saferepr(masked_kwargs, 1024)

    def check_shape(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`ArgumentsError` unless the call binds to the parameters, as in Python.

        What Celery's own argument check does for function tasks, for callers (a beat
        schedule) that publish without going through ``apply_async``.
        """
        if not self._built:
            self._ensure_built()
        if self.model is not None:
            self.validate_call(args, kwargs)
            return
        data, _, _ = self._bind(args, kwargs)
        try:
            self.arguments.validator.validate_python(data)
        except ValidationError as exc:
            shape = [e for e in exc.errors() if e["type"] in _SHAPE_ERRORS]
            if shape:
                raise ArgumentsError.from_exception_data(
                    exc.title, cast("list[InitErrorDetails]", shape)
                ) from None

    def named(self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by parameter name, unvalidated: what hooks of an undeclared task get."""
        if not self._built:
            self._ensure_built()
        if self.model is not None:
            return dict(kwargs)
        try:
            data, extra_args, extra_kwargs = self._bind(args, kwargs)
        except ValidationError:
            return dict(kwargs)
        if extra_args:
            data["*args"] = extra_args
        return {**data, **extra_kwargs}

    # -- canvas -----------------------------------------------------------------------------

    def check_partial(
        self,
        args: tuple[Any, ...] | list[Any],
        kwargs: Mapping[str, Any],
        *,
        prepended: int | None,
        complete: bool,
    ) -> None:
        """Check a signature's arguments before it is published with others.

        ``prepended`` is how many positional arguments the canvas will put in front of
        ``args`` (a chain step gets the previous result: 1), or ``None`` when that is not
        known yet (a signature just created): then any count that could make the call
        fit is accepted. ``complete=False`` accepts missing arguments (keywords may still
        be merged in). Raises the error of the most natural reading (nothing prepended)
        when no reading fits.
        """
        if not self._built:
            self._ensure_built()
        if not self.validates:
            return
        if self.model is not None:
            counts = [prepended] if prepended is not None else [0, 1]
        else:
            most = max(len(self.positional) - len(args), 0) + 1
            counts = [prepended] if prepended is not None else list(range(most))
        first: ValidationError | None = None
        for count in counts:
            error = self._partial_error(args, kwargs, count, complete)
            if error is None:
                return
            first = first or error
        assert first is not None
        raise first

    def _partial_error(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any], count: int, complete: bool
    ) -> ValidationError | None:
        if self.model is not None:
            if count:
                if args or kwargs:
                    return _shape_error(self.title, "unexpected_positional_argument", (0,), args or kwargs)
                return None
            try:
                self.validate_call(args, kwargs)
            except ValidationError as exc:
                return _kept_errors(exc, complete, ())
            return None
        placeholder = ("<previous result>",) * count
        try:
            data, extra_args, extra_kwargs = self._bind((*placeholder, *args), kwargs)
        except ValidationError as exc:
            return exc
        skipped = tuple(self.positional[:count])
        for name in skipped:
            data.pop(name, None)
        extra_args = extra_args[max(0, count - len(self.positional)) :]  # placeholders in *args
        try:
            self.arguments.validator.validate_python(data)
            if extra_args and self.varargs_declared:
                self.varargs.validator.validate_python(extra_args)  # type: ignore[union-attr]
            if extra_kwargs and self.varkw_declared:
                self.varkw.validator.validate_python(extra_kwargs)  # type: ignore[union-attr]
        except ValidationError as exc:
            return _kept_errors(exc, complete, skipped)
        return None

    # -- binding ----------------------------------------------------------------------------

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
        """Bind arguments to parameter names as Python does, or raise :class:`ArgumentsError`."""
        positional = self.positional
        n = len(positional)
        if len(args) > n and not self.has_varargs:
            raise _shape_error(self.title, "unexpected_positional_argument", (n,), args[n])
        data = dict(zip(positional, args, strict=False))
        extra_args = tuple(args[n:])
        extra_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in self.positional_only:
                # Python hands a keyword named like a positional-only parameter to **kwargs.
                if not self.has_varkw:
                    raise _shape_error(self.title, "unexpected_keyword_argument", (key,), value)
                extra_kwargs[key] = value
            elif key in data:
                raise _shape_error(self.title, "multiple_argument_values", (key,), value)
            elif self.has_varkw and key not in self.argument_names:
                extra_kwargs[key] = value
            else:
                data[key] = value
        return data, extra_args, extra_kwargs

    def _reshape(
        self,
        values: dict[str, Any],
        n_args: int,
        extra_args: tuple[Any, ...] | list[Any],
        extra_kwargs: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Put values back in the shape the caller used: the first ``n_args`` positionally."""
        if not n_args:
            return (), ({**values, **extra_kwargs} if extra_kwargs else values)
        names = self.positional[:n_args]
        taken = frozenset(names)
        call_args = (*(values[name] for name in names), *extra_args)
        call_kwargs = {key: value for key, value in values.items() if key not in taken}
        if extra_kwargs:
            call_kwargs.update(extra_kwargs)
        return call_args, call_kwargs

    # -- contract ---------------------------------------------------------------------------

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema of the payload (``"payload"``) and of the result (``"result"``).

        For a single-model task the payload schema is the model's: the one JSON object
        sent as the only positional argument. Otherwise it is an object of the
        arguments by name (a caller may also send them positionally, in order);
        ``*args`` items are described under ``x-celery-kit-varargs``. ``result`` is
        ``None`` for an unannotated task.
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

    def dumps_result(self, value: Any) -> bool:
        """Whether :meth:`dump_result` may change ``value``: a model, or a container of them."""
        if not self._validate or isinstance(value, _JSON_SCALARS):
            return False  # Celery's pydantic=True wrapper dumps what it dumps
        if isinstance(value, BaseModel):
            return True
        return self.result_has_models and isinstance(value, (list, tuple, dict))

    def dump_result(self, value: Any) -> Any:
        """The return value as it is stored: pydantic models dumped to JSON data.

        Models -- returned, or in the list, tuple or dict the function returned -- are
        dumped with ``model_dump(mode="json")``; nothing else is converted, so a result
        travels as plain Celery stores it (a tuple stays a tuple, a ``datetime`` a
        ``datetime`` through kombu's serializer, a returned signature a signature).
        """
        return _dump_models(value)

    def load_result(self, value: Any) -> Any:
        """Rebuild the typed return value (e.g. the result model) from stored JSON data."""
        self._ensure_built()
        if self.return_adapter is None:
            return value
        return self.return_adapter.validate_python(value)


def _kept_errors(exc: ValidationError, complete: bool, skipped: tuple[str, ...]) -> ValidationError | None:
    """The errors that still count for a partial signature, as one error (or ``None``)."""
    if complete and not skipped:
        return _as_arguments_error(exc)
    kept = [
        error
        for error in exc.errors()
        if not (
            error["type"] == "missing" and (not complete or (error["loc"][:1] and error["loc"][0] in skipped))
        )
    ]
    if not kept:
        return None
    return _as_arguments_error(
        ValidationError.from_exception_data(exc.title, cast("list[InitErrorDetails]", kept))
    )
