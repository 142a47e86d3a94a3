"""Retry policies: which errors are retried, how long to wait, and when to stop.

Delays come from tenacity's wait strategies, so everything tenacity offers (fixed,
incrementing, exponential, jittered, chained, combined with ``+``) works as ``wait=``.
Celery's own ``autoretry_for``/``retry_backoff`` truncate delays to whole seconds and
cannot stop at a deadline; a :class:`RetryPolicy` does both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import tenacity
from tenacity.wait import wait_exponential, wait_random_exponential

from ._errors import ConfigurationError

__all__ = ["RetryDecision", "RetryPolicy", "WaitStrategy"]

#: Anything tenacity accepts as ``wait=``: a callable from the retry state to seconds.
WaitStrategy = Callable[[tenacity.RetryCallState], float]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt: retry after ``delay`` seconds, or stop."""

    retry: bool
    delay: float = 0.0
    #: Why the task stops: ``"not retriable"``, ``"retries exhausted"`` or ``"deadline"``.
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a task retries.

    Args:
        retry_on: exception classes that are worth another attempt (subclasses too).
            Everything else fails at once. :class:`~celery_kit.PermanentError`,
            :class:`~celery_kit.PayloadValidationError` and Celery's control-flow
            exceptions are never retried, even when listed.
        max_retries: retries after the first attempt; ``None`` means no count limit,
            which is only accepted together with a ``deadline``.
        backoff: base delay in seconds (floats are honoured); the n-th retry waits up to
            ``backoff * 2**(n-1)`` seconds.
        max_backoff: upper bound of any single delay, in seconds.
        jitter: full jitter (a uniform draw between 0 and the exponential delay), which
            keeps a fleet of failing tasks from retrying in lockstep.
        deadline: seconds after the *first attempt* started past which no retry is
            scheduled; the first attempt's time travels in the message headers.
        wait: any tenacity wait strategy (``tenacity.wait_fixed(2)``,
            ``wait_exponential_jitter(...)``, ...); overrides ``backoff``/``jitter``.
        retry_on_timeout: also retry after a soft time limit (once the cleanup ran).
    """

    retry_on: tuple[type[BaseException], ...] | type[BaseException] = ()
    max_retries: int | None = 3
    backoff: float = 1.0
    max_backoff: float = 600.0
    jitter: bool = True
    deadline: float | None = None
    wait: WaitStrategy | None = None
    retry_on_timeout: bool = False
    _strategy: WaitStrategy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        retry_on = self.retry_on if isinstance(self.retry_on, tuple) else (self.retry_on,)
        for cls in retry_on:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ConfigurationError(f"RetryPolicy(retry_on=...) takes exception classes, got {cls!r}.")
        object.__setattr__(self, "retry_on", retry_on)
        if self.max_retries is not None and self.max_retries < 0:
            raise ConfigurationError("RetryPolicy(max_retries=...) must be >= 0 or None.")
        if self.max_retries is None and self.deadline is None:
            raise ConfigurationError(
                "RetryPolicy(max_retries=None) retries forever; give it a deadline= "
                "(seconds from the first attempt) or a max_retries count."
            )
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigurationError(f"RetryPolicy({name}=...) must be a finite number >= 0.")
        if self.deadline is not None and not (math.isfinite(self.deadline) and self.deadline > 0):
            raise ConfigurationError("RetryPolicy(deadline=...) must be a positive number of seconds.")
        if self.wait is not None and not callable(self.wait):
            raise ConfigurationError(
                "RetryPolicy(wait=...) takes a tenacity wait strategy, e.g. tenacity.wait_fixed(2)."
            )
        strategy: WaitStrategy
        if self.wait is not None:
            strategy = self.wait
        elif self.jitter:
            strategy = wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        else:
            strategy = wait_exponential(multiplier=self.backoff, max=self.max_backoff)
        object.__setattr__(self, "_strategy", strategy)

    @property
    def exceptions(self) -> tuple[type[BaseException], ...]:
        """``retry_on`` as a tuple, ready for ``isinstance``."""
        return cast("tuple[type[BaseException], ...]", self.retry_on)

    def delay_for(self, attempt: int, exc: BaseException, elapsed: float = 0.0) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first attempt)."""
        state = tenacity.RetryCallState(cast(Any, None), None, (), {})
        state.attempt_number = attempt
        state.set_exception((type(exc), exc, exc.__traceback__))
        # Make ``seconds_since_start`` report the time since the first attempt.
        state.start_time = cast(float, state.outcome_timestamp) - elapsed
        delay = float(self._strategy(state))
        return delay if delay > 0 and math.isfinite(delay) else 0.0

    def decide(
        self,
        exc: BaseException,
        retries: int,
        first_attempt: float,
        now: float,
        *,
        force: bool = False,
    ) -> RetryDecision:
        """Decide about a failure seen after ``retries`` earlier retries.

        ``first_attempt`` and ``now`` are wall-clock timestamps (``time.time()``), since
        the first attempt may have run on another host. ``force`` treats ``exc`` as
        retriable whatever ``retry_on`` says (a timeout under ``retry_on_timeout``).
        """
        if not force and not isinstance(exc, self.exceptions):
            return RetryDecision(False, reason="not retriable")
        if self.max_retries is not None and retries >= self.max_retries:
            return RetryDecision(False, reason="retries exhausted")
        elapsed = max(0.0, now - first_attempt)
        delay = self.delay_for(retries + 1, exc, elapsed)
        if self.deadline is not None and elapsed + delay > self.deadline:
            return RetryDecision(False, delay, reason="deadline")
        return RetryDecision(True, delay)


RetryPolicy.__module__ = "celery_kit"
