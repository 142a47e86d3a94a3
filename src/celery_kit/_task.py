"""``ValidatedTask`` and ``@validated_task``: validated payloads, retries, timeout cleanup.

Where each behaviour hooks into Celery, and why:

* **caller side** -- :meth:`ValidatedTask.apply_async` (which ``delay()``, signatures,
  chains and groups all reach) validates and dumps the payload to plain JSON before
  Celery builds a message; :meth:`ValidatedTask.apply` validates before running.
* **worker side** -- the task's ``run`` is wrapped once, when the task class is
  created. Celery's tracer calls ``task.run`` directly (it skips ``__call__`` unless a
  class overrides it), so the wrapper is the cheapest place that sees every execution.
  It validates the message's arguments, calls the function, dumps a returned model,
  and decides what a failure means: retry (with a tenacity delay), or a final failure
  reported once to the app's observers.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NoReturn, TypeVar, overload

import celery
from celery import bootsteps, shared_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from pydantic import BaseModel, ValidationError

from ._canvas import check_canvas_options
from ._dispatch import dispatcher_of, publishing_app
from ._errors import (
    ChainPayloadError,
    ConfigurationError,
    PayloadTooLargeError,
    PayloadValidationError,
    PermanentError,
)
from ._events import Classification, EventType, FailureKind, TaskEvent
from ._payload import PayloadSchema, payload_validation_error
from ._pools import pool_name
from ._retry import RetryPolicy
from ._secret_values import mask_secret_values  # issue 15
from ._unique import Unique, bind_guard, guard_run

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "FIRST_ATTEMPT_HEADER",
    "MAX_PAYLOAD_SETTING",
    "ValidatedTask",
    "validated_task",
]

logger = logging.getLogger("celery_kit")

#: Message header carrying the wall-clock time of a task's first attempt, so a retry
#: deadline holds across retries and hosts.
FIRST_ATTEMPT_HEADER = "celery_kit_first_attempt"
#: App setting (``app.conf``) capping the serialised payload size, in bytes; 0 disables.
MAX_PAYLOAD_SETTING = "celery_kit_max_payload_bytes"
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024

_CONTROL_FLOW = (Retry, Ignore, Reject)
#: Refused for every ValidatedTask: decoding them runs code the producer chose.
_CODE_EXECUTING_SERIALIZERS = frozenset({"pickle"})
_warned_without_limits: set[str] = set()

F = TypeVar("F", bound=Callable[..., Any])


def _wrap_run(fun: Callable[..., Any], bound: bool, schema: PayloadSchema) -> Callable[..., Any]:
    """Build the ``run`` Celery executes: validate, call, dump, decide on failure.

    This runs once per attempt, so everything that can be is looked up here, once; the
    request (a lookup through Celery's thread-local stack) is read only when needed.
    ``inspect.signature(task.run)`` shows the function's own signature (Celery's
    ``retry()`` binds arguments to it), not this wrapper's ``(*args, **kwargs)``.
    """
    validate = schema.validate_call
    dump_result = schema.dump_result
    dumps = schema.dumps_result

    def run(self: ValidatedTask, *args: Any, **kwargs: Any) -> Any:
        try:
            call_args, call_kwargs, payload = validate(args, kwargs)
        except ValidationError as exc:
            request = self.request
            if request.called_directly:
                raise
            self._reject_payload(exc, request)
        if self._keep_payload or getattr(self.app, "_celery_kit_dispatcher", None) is not None:
            # For observers (TaskEvent.payload): the model as validated, or a dict of the
            # declared arguments.
            self.request._celery_kit_payload = payload if payload is not None else schema.named(args, kwargs)
        started = time.time()
        try:
            result = fun(self, *call_args, **call_kwargs) if bound else fun(*call_args, **call_kwargs)
        except _CONTROL_FLOW:
            raise
        except Exception as exc:
            request = self.request
            if request.called_directly:
                raise
            if payload is None:
                payload = schema.named(args, kwargs)
            self._handle_failure(exc, request, payload, started)
        if result is None or not dumps(result) or self.request.called_directly:
            return result  # a direct call returns what the function returned, as in Celery
        return dump_result(result)

    run.__name__ = getattr(fun, "__name__", "run")
    run.__qualname__ = getattr(fun, "__qualname__", "run")
    run.__doc__ = fun.__doc__
    run.__module__ = fun.__module__
    run.__signature__ = schema.run_signature()  # type: ignore[attr-defined]
    run._celery_kit_run = True  # type: ignore[attr-defined]
    return run


def _chain_payload_error(exc: ValidationError, task_name: str) -> ChainPayloadError:
    error = payload_validation_error(exc, task_name)
    message = (
        f"the previous task's result does not fit the signature of {task_name!r}, the next "
        f"step of its chain or its callback: {error.message}"
    )
    return ChainPayloadError(message, error.errors, task_name)


def _is_call(args: Any, kwargs: Any) -> bool:
    """Whether arguments have the types Celery accepts; anything else is left to Celery's errors."""
    return (args is None or isinstance(args, (list, tuple))) and (
        kwargs is None or isinstance(kwargs, Mapping)
    )


def _handed_on_by_tracer(options: Mapping[str, Any]) -> bool:
    """Whether Celery's tracer is publishing the next step of a chain or a callback.

    It passes the finished task's ids; a retry (``signature_from_request``) passes them
    too, but with ``retries``.
    """
    return "parent_id" in options and "root_id" in options and "retries" not in options


def _hook_arity(hook: Callable[..., Any]) -> int:
    """How many positional arguments a cleanup hook takes: 1 (payload) or 2 (+ request)."""
    try:
        params = inspect.signature(hook).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return 2 if len(positional) >= 2 else 1


class ValidatedTask(celery.Task):  # type: ignore[misc]
    """A Celery task whose function signature is its payload schema.

    Use it as ``@app.task(base=ValidatedTask)``, through :func:`validated_task`, or by
    subclassing and defining ``run``. Options it adds to Celery's:

    * ``retry_policy`` (or ``retry=`` with the decorators): a
      :class:`~celery_kit.RetryPolicy`. Celery's ``autoretry_for``/``retry_backoff``
      options are translated into one, so validation errors are never auto-retried.
    * ``max_payload_bytes``: this task's payload cap, overriding the app setting
      ``celery_kit_max_payload_bytes`` (256 KiB by default; 0 disables the cap).
    * ``unique``: a :class:`~celery_kit.Unique`, one task per payload key (locks in Redis).
    """

    #: Reports hard time limits on every supported Celery version (see ``_request.py``).
    Request = "celery_kit._request:KitRequest"
    retry_policy: ClassVar[RetryPolicy | None] = None
    #: Log the validated payload (secrets masked) with the task's lifecycle lines.
    log_payload: ClassVar[bool] = False
    #: Include the validated payload (secrets and password-like fields masked) in alerts.
    alert_payload: ClassVar[bool] = False
    _keep_payload: ClassVar[bool] = False
    max_payload_bytes: ClassVar[int | None] = None
    #: The compiled schema of ``run``; ``None`` on abstract classes without ``run``.
    payload_schema: ClassVar[PayloadSchema | None] = None
    _soft_timeout_hooks: ClassVar[list[tuple[Callable[..., Any], int]]] = []
    _payload_limit: ClassVar[int] = DEFAULT_MAX_PAYLOAD_BYTES
    #: ``unique=Unique(...)``: one task per payload key (see ``_unique.py``).
    unique: ClassVar[Unique | None] = None
    _unique_guard: ClassVar[Any] = None
    #: Registered through :func:`validated_task`: the kit's registration rules apply even
    #: when the signature declares nothing (they would change a plain Celery task).
    _celery_kit_decorated: ClassVar[bool] = False

    # -- class creation ---------------------------------------------------------------------

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._soft_timeout_hooks = list(cls._soft_timeout_hooks)
        cls._keep_payload = bool(cls.log_payload or cls.alert_payload)
        namespace = cls.__dict__
        policy = namespace.get("retry")
        if isinstance(policy, RetryPolicy):
            # ``retry=`` would shadow Task.retry(); keep the method, store the policy.
            del cls.retry
            cls.retry_policy = policy
        policy = cls.retry_policy
        if policy is not None and "retry_policy" in namespace:
            if getattr(cls, "autoretry_for", None):
                raise ConfigurationError(
                    f"task {namespace.get('name')!r}: give either retry=RetryPolicy(...) or "
                    "autoretry_for=..., not both."
                )
            declared = namespace.get("max_retries", policy.max_retries)
            if declared != policy.max_retries:
                raise ConfigurationError(
                    f"task {namespace.get('name')!r}: max_retries={declared!r} contradicts its "
                    f"RetryPolicy(max_retries={policy.max_retries!r}); set it on the policy only."
                )
            # Celery's own retry() checks this count too; keep the two in step.
            cls.max_retries = policy.max_retries
        run = namespace.get("run")
        if run is None or getattr(run, "_celery_kit_run", False):
            return
        fun, bound = (run.__func__, False) if isinstance(run, staticmethod) else (run, True)
        name = namespace.get("name") or getattr(fun, "__qualname__", cls.__name__)
        # Celery 5.7 marks a pydantic=True task class; 5.5 and 5.6 wrap its function. Its
        # wrapper validates then, exactly as in plain Celery; the kit adds nothing to it.
        celery_validates = namespace.get("_dump_pydantic_arguments") is not None or (
            _wrapped_by_celery_pydantic(run)
        )
        cls.payload_schema = PayloadSchema(
            fun, bound=bound, name=name, validate=not celery_validates, lenient=not cls._celery_kit_decorated
        )
        cls.run = _wrap_run(fun, bound, cls.payload_schema)
        if cls.unique is not None:  # -- uniqueness hook: claim before the body, release after
            cls.run = guard_run(cls.run)
        # Celery's add_autoretry_behaviour() wraps ``run`` unless ``_orig_run`` exists;
        # the kit's wrapper applies Celery's autoretry rules itself (_autoretry), so that
        # it knows which attempt is final.
        cls._orig_run = cls.run

    @classmethod
    def _kit_rules(cls) -> bool:
        """Whether the kit's registration rules apply: a task written for the kit.

        A task that declares no types and was not made with :func:`validated_task` (an
        existing task under ``task_cls="celery_kit:ValidatedTask"``) keeps Celery's rules.
        """
        schema = cls.payload_schema
        return schema is not None and (schema.validates or cls._celery_kit_decorated)

    @classmethod
    def on_bound(cls, app: celery.Celery) -> None:
        """Check time limits and read the payload cap once, when the task joins an app."""
        super().on_bound(app)
        app.steps["worker"].add(WorkerChecks)
        if cls.unique is not None:  # -- uniqueness hook: the lock store, refused here if unusable
            cls._unique_guard = bind_guard(cls, app)
        if not cls._kit_rules():
            return  # a task written for plain Celery keeps Celery's rules
        conf = app.conf
        cap = cls.max_payload_bytes
        if cap is None:
            cap = conf.get(MAX_PAYLOAD_SETTING, DEFAULT_MAX_PAYLOAD_BYTES)
        cls._payload_limit = int(cap or 0)
        soft = cls.soft_time_limit if cls.soft_time_limit is not None else conf.task_soft_time_limit
        hard = cls.time_limit if cls.time_limit is not None else conf.task_time_limit
        if soft and hard and soft >= hard:
            raise ConfigurationError(
                f"task {cls.name!r}: soft_time_limit={soft} must be below time_limit={hard}, "
                "or the cleanup never gets to run; lower the soft limit."
            )
        if not soft and not hard and cls.name not in _warned_without_limits:
            _warned_without_limits.add(cls.name)
            logger.warning(
                "task %s has no soft_time_limit or time_limit (task options or "
                "task_soft_time_limit/task_time_limit): a hung call will hold a worker "
                "slot forever. Give it a soft limit for cleanup and a hard limit above it.",
                cls.name,
            )

    # -- caller side ------------------------------------------------------------------------

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Validate and dump the payload, then publish; nothing is sent if it is invalid.

        A call of the wrong shape raises :class:`~celery_kit.ArgumentsError`, both a
        ``TypeError`` (as Celery's own argument check raises) and a
        ``pydantic.ValidationError``; ``typing=False`` turns the caller's checks off, as in
        Celery. A task that declares no types keeps Celery's own check and errors. The
        steps a chain, chord or callback will run next are checked before anything is
        published.

        Raises:
            TypeError: ``args``/``kwargs`` are not a list or a mapping (Celery's error), or
                the call does not fit the signature (an ``ArgumentsError``).
            pydantic.ValidationError: the payload does not fit the task's signature.
            PayloadTooLargeError: the JSON payload is above the cap.
            ConfigurationError: a serializer other than JSON was asked for.
        """
        schema = self.payload_schema
        if schema is not None and _is_call(args, kwargs):
            converts = schema.validates or self._celery_kit_decorated
            serializer = options.get("serializer") or self.serializer
            if serializer != "json" and (converts or serializer in _CODE_EXECUTING_SERIALIZERS):
                raise ConfigurationError(
                    f"task {self.name!r} refuses serializer {serializer!r}: validated "
                    "payloads travel as JSON only, and pickle lets any producer run code on "
                    "your workers. Use serializer='json' (task_serializer='json')."
                )
            if self.typing:
                if converts:  # a wrong call's shape: ArgumentsError, a TypeError as in Celery
                    args, kwargs = self._checked_wire(schema, args, kwargs, options)
                if "parent_id" not in options:  # the caller, not Celery's tracer handing on
                    try:
                        check_canvas_options(options, link)
                    except (ValidationError, PayloadTooLargeError) as exc:
                        self._refused(exc)
                        raise
            elif converts:  # Celery's typing=False: the caller checks nothing; the worker still does
                with contextlib.suppress(ValidationError, PayloadTooLargeError):
                    args, kwargs = self._checked_wire(schema, args, kwargs, options)
        guard = self._unique_guard
        if guard is not None and _is_call(args, kwargs):  # -- uniqueness hook: lock, then publish
            return guard.publish(
                self,
                args,
                kwargs,
                task_id,
                options,
                lambda task_id, options: self._publish(
                    args, kwargs, task_id, producer, link, link_error, shadow, options
                ),
            )
        return self._publish(args, kwargs, task_id, producer, link, link_error, shadow, options)

    def _publish(
        self,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        producer: Any,
        link: Any,
        link_error: Any,
        shadow: str | None,
        options: dict[str, Any],
    ) -> Any:
        token = publishing_app.set(self._get_app())
        try:
            return super().apply_async(args, kwargs, task_id, producer, link, link_error, shadow, **options)
        finally:
            publishing_app.reset(token)

    def _checked_wire(
        self,
        schema: PayloadSchema,
        args: tuple[Any, ...] | list[Any] | None,
        kwargs: Mapping[str, Any] | None,
        options: dict[str, Any],
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The payload as it goes on the wire, size-checked, with masked reprs for secrets."""
        try:
            wire_args, wire_kwargs = schema.to_wire(args, kwargs)
            schema.check_size(wire_args, wire_kwargs, self._payload_limit)
            if schema.has_secrets and "argsrepr" not in options:
                options["argsrepr"], options["kwargsrepr"] = schema.masked_reprs(wire_args, wire_kwargs)
        except (ValidationError, PayloadTooLargeError) as exc:
            if not self.typing:
                raise
            self._refused(exc)
            if isinstance(exc, ValidationError) and _handed_on_by_tracer(options):
                # Celery's tracer is dispatching a chain step or callback with the
                # previous task's result: fail that task with a readable error.
                raise _chain_payload_error(exc, self.name) from None
            raise
        return wire_args, wire_kwargs

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *rest: Any,
        **options: Any,
    ) -> Any:
        """Run locally (eagerly), exactly as a worker would: the payload is validated by the
        task's ``run``, and an invalid one is the ``FAILURE`` of the returned result
        (:class:`~celery_kit.PayloadValidationError`), raised where Celery raises eager
        errors (``throw=True``, ``task_eager_propagates``)."""
        return super().apply(args, kwargs, *rest, **options)

    def signature(self, args: Any = None, *starargs: Any, **starkwargs: Any) -> Any:
        """Celery's signature, refused at once if no completion of it could ever fit.

        ``.s()`` may still get arguments in front (a chain's previous result, a group's
        partial arguments) and keywords merged in, so only what no completion can fix is
        refused: a value of the wrong type wherever it lands, too many arguments. An
        immutable ``.si()`` signature is complete and is checked whole.
        """
        sig = super().signature(args, *starargs, **starkwargs)
        schema = self.payload_schema
        if schema is not None and schema.validates and self.typing:
            sig_args, sig_kwargs = sig.args, sig.kwargs
            if _is_call(sig_args, sig_kwargs):
                try:
                    schema.check_partial(
                        sig_args, sig_kwargs, prepended=0 if sig.immutable else None, complete=sig.immutable
                    )
                except ValidationError as exc:
                    self._refused(exc)
                    raise
        return sig

    subtask = signature

    def _refused(self, exc: Exception) -> None:
        """Tell observers the caller's payload was refused (nothing was published)."""
        dispatcher = dispatcher_of(self.app)
        if dispatcher is not None:
            dispatcher.emit(
                TaskEvent(EventType.REFUSED, self.name, None, exception=exc, detail="caller", task=self)
            )

    # -- typed results ----------------------------------------------------------------------

    def parse_result(self, value: Any) -> Any:
        """Rebuild the typed return value (e.g. the result model) from stored JSON data."""
        if self.payload_schema is None:
            return value
        return self.payload_schema.load_result(value)

    def get_result(self, result: Any, **get_options: Any) -> Any:
        """``result.get(**get_options)``, parsed back into the task's return type."""
        return self.parse_result(result.get(**get_options))

    # -- soft-timeout cleanup ---------------------------------------------------------------

    @overload
    def on_soft_timeout(self, payload_or_hook: F) -> F: ...
    @overload
    def on_soft_timeout(self, payload_or_hook: Any) -> None: ...

    def on_soft_timeout(self, payload_or_hook: Any) -> Any:
        """Register a cleanup hook (decorator), or -- overridden -- do the cleanup.

        As a decorator, ``@task.on_soft_timeout`` registers a callable taking the
        validated payload (and optionally the request). Subclasses may instead override
        ``on_soft_timeout(self, payload)``. Either runs exactly once when the soft time
        limit fires; a hook that raises is logged and never hides the timeout.
        """
        if callable(payload_or_hook) and not isinstance(payload_or_hook, (BaseModel, Mapping)):
            type(self)._soft_timeout_hooks.append((payload_or_hook, _hook_arity(payload_or_hook)))
            return payload_or_hook
        return None

    def _run_soft_timeout_cleanup(self, payload: Any, request: Any) -> None:
        if type(self).on_soft_timeout is not ValidatedTask.on_soft_timeout:
            try:
                self.on_soft_timeout(payload)
            except Exception as exc:
                mask_secret_values(exc, payload)  # the log line must not show them either
                logger.exception("soft-timeout cleanup of task %s[%s] failed", self.name, request.id)
        for hook, arity in self._soft_timeout_hooks:
            try:
                if arity == 2:
                    hook(payload, request)
                else:
                    hook(payload)
            except Exception as exc:
                mask_secret_values(exc, payload)
                logger.exception(
                    "soft-timeout cleanup %s of task %s[%s] failed",
                    getattr(hook, "__qualname__", hook),
                    self.name,
                    request.id,
                )

    # -- worker side: failures ----------------------------------------------------------------

    def _reject_payload(self, exc: ValidationError, request: Any) -> NoReturn:
        error = payload_validation_error(exc, self.name)
        request._celery_kit_outcome = Classification(FailureKind.INVALID_PAYLOAD, True, "invalid payload")
        raise error from None

    def _handle_failure(self, exc: Exception, request: Any, payload: Any, started: float) -> NoReturn:
        """Classify ``exc`` once; retry it or mark the final failure, then re-raise.

        The classification is kept on the request; the signal bridge turns it into the
        one ``RETRYING`` or ``FAILED`` event observers see for this attempt.
        """
        mask_secret_values(exc, payload)  # issue 15: before any copy of the error is made
        policy = self.retry_policy
        retriable = False
        timeout = None
        if isinstance(exc, SoftTimeLimitExceeded):
            self._run_soft_timeout_cleanup(payload, request)
            kind, reason, timeout = FailureKind.TIMEOUT, "soft time limit", "soft"
            retriable = policy is not None and policy.retry_on_timeout
        elif isinstance(exc, PayloadValidationError):
            kind, reason = FailureKind.INVALID_PAYLOAD, "invalid payload"
        elif isinstance(exc, PermanentError):
            kind, reason = FailureKind.PERMANENT, "permanent error"
        elif policy is not None and isinstance(exc, policy.exceptions):
            kind, reason, retriable = FailureKind.TRANSIENT, "", True
        else:
            kind, reason = FailureKind.PERMANENT, "not retriable"

        if (
            policy is None
            and kind in (FailureKind.PERMANENT, FailureKind.TIMEOUT)
            and reason != "permanent error"
        ):
            autoretry_for = tuple(getattr(self, "autoretry_for", None) or ())
            if autoretry_for and isinstance(exc, autoretry_for):
                dont = tuple(getattr(self, "dont_autoretry_for", None) or ())
                if not (dont and isinstance(exc, dont)):
                    self._autoretry(exc, request, FailureKind.TRANSIENT if timeout is None else kind, timeout)

        if retriable:
            assert policy is not None
            first_attempt = self._first_attempt(request, started)
            decision = policy.decide(
                exc, request.retries, first_attempt, time.time(), force=kind is FailureKind.TIMEOUT
            )
            if decision.retry:
                request._celery_kit_outcome = Classification(
                    kind, False, reason or "retriable error", decision.delay, timeout
                )
                headers = {**(request.headers or {}), FIRST_ATTEMPT_HEADER: first_attempt}
                raise self.retry(exc=exc, countdown=decision.delay, headers=headers)
            reason = decision.reason if kind is FailureKind.TRANSIENT else f"{reason}, {decision.reason}"
        request._celery_kit_outcome = Classification(kind, True, reason, None, timeout)
        raise exc

    def _autoretry(self, exc: Exception, request: Any, kind: FailureKind, timeout: str | None) -> NoReturn:
        """Celery's ``autoretry_for`` rules, applied as ``add_autoretry_behaviour`` applies them.

        Same options (``retry_kwargs``, ``retry_backoff``, ``retry_backoff_max``,
        ``retry_jitter``, a ``self.retry(max_retries=...)`` override), same delays, same
        count; the kit only learns which attempt is the last, to report it once.
        """
        retry_kwargs = dict(getattr(self, "retry_kwargs", None) or {})
        backoff = float(getattr(self, "retry_backoff", False) or 0)
        if backoff:
            retry_kwargs["countdown"] = get_exponential_backoff_interval(
                factor=int(max(1.0, backoff)),
                retries=request.retries,
                maximum=int(getattr(self, "retry_backoff_max", 600)),
                full_jitter=getattr(self, "retry_jitter", True),
            )
        if hasattr(self, "override_max_retries"):
            retry_kwargs["max_retries"] = getattr(self, "override_max_retries", self.max_retries)
        countdown = retry_kwargs.get("countdown")
        delay = float(countdown) if isinstance(countdown, (int, float)) else None
        request._celery_kit_outcome = Classification(kind, False, "retriable error", delay, timeout)
        try:
            ret = self.retry(exc=exc, **retry_kwargs)
        except Retry:
            raise
        except BaseException as error:
            final = "retries exhausted" if error is exc else f"retry failed: {type(error).__name__}"
            request._celery_kit_outcome = Classification(kind, True, final, None, timeout)
            raise
        if hasattr(self, "override_max_retries"):
            delattr(self, "override_max_retries")
        raise ret

    @staticmethod
    def _first_attempt(request: Any, started: float) -> float:
        value = getattr(request, FIRST_ATTEMPT_HEADER, None)
        if value is None and request.headers:
            value = request.headers.get(FIRST_ATTEMPT_HEADER)
        try:
            first = float(value) if value is not None else started
        except (TypeError, ValueError):
            return started
        return first if math.isfinite(first) and first <= started else started


ValidatedTask.__module__ = "celery_kit"


def _wrapped_by_celery_pydantic(run: Any) -> bool:
    """Whether Celery 5.5/5.6's ``pydantic=True`` wrapped the task function.

    ``functools.wraps`` copies the name, so the wrapper is told by its code object.
    """
    code = getattr(getattr(run, "__func__", run), "__code__", None)
    return (
        code is not None
        and code.co_name == "wrapper"
        and code.co_filename.replace(os.sep, "/").endswith("celery/app/base.py")
    )


@overload
def validated_task(app: Callable[..., Any], /) -> ValidatedTask: ...
@overload
def validated_task(
    app: celery.Celery | None = None, **options: Any
) -> Callable[[Callable[..., Any]], ValidatedTask]: ...


def validated_task(app: Any = None, **options: Any) -> Any:
    """Register a function as a :class:`ValidatedTask`.

    ``@validated_task(app, **celery_task_options)`` registers it on ``app``; without an
    app it behaves like :func:`celery.shared_task` (every app gets it). ``retry=`` takes
    a :class:`~celery_kit.RetryPolicy`; all other options are Celery's own.
    """
    if callable(app) and not isinstance(app, celery.Celery):
        return validated_task()(app)  # bare ``@validated_task``
    base = options.pop("base", ValidatedTask)
    if not (isinstance(base, type) and issubclass(base, ValidatedTask)):
        raise ConfigurationError(f"validated_task(base=...) must subclass ValidatedTask, got {base!r}.")
    if "retry" in options:
        options["retry_policy"] = options.pop("retry")
    policy = options.get("retry_policy")
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise ConfigurationError(f"retry= takes a RetryPolicy, got {policy!r}.")

    options["_celery_kit_decorated"] = True

    def decorator(fun: Callable[..., Any]) -> ValidatedTask:
        # At runtime this may be Celery's lazy proxy, which forwards to the task.
        register = shared_task if app is None else app.task
        task: ValidatedTask = register(base=base, **options)(fun)
        return task

    return decorator


class WorkerChecks(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep of every app with a kit task: checks made once, when a worker starts.

    A bootstep, not a ``worker_init`` receiver: it belongs to the app whose task added
    it, runs in workers only, and connects no signal.
    """

    label = "celery_kit task checks"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        _warn_time_limits_without_prefork(worker)


def _warn_time_limits_without_prefork(sender: Any) -> None:
    """At worker start: resolve every deferred schema now (a name that does not resolve is
    reported here, not at the first message); time limits are enforced by the prefork
    pool only (gevent: the hard limit only)."""
    for task in list(sender.app.tasks.values()):
        schema = getattr(task, "payload_schema", None)
        if isinstance(task, ValidatedTask) and schema is not None:
            try:
                schema._ensure_built()
            except ConfigurationError as exc:
                logger.error("%s", exc)
    pool = pool_name(sender)
    if pool == "prefork":
        return
    soft_only = pool == "gevent"
    conf = sender.app.conf
    limited = []
    for task in sender.app.tasks.values():
        if isinstance(task, ValidatedTask) and task._kit_rules():
            soft = task.soft_time_limit or conf.task_soft_time_limit
            hard = task.time_limit or conf.task_time_limit
            if soft or (hard and not soft_only):
                limited.append(task.name)
    if limited:
        logger.warning(
            "pool %s does not enforce %s: tasks %s will run past their limits and their "
            "soft-timeout cleanup will never run. Use the prefork pool (-P prefork) for them.",
            pool,
            "soft time limits" if soft_only else "time limits",
            ", ".join(sorted(limited)),
        )
