"""Failure handling per backend: retries with backoff for retryable errors, and a circuit breaker.

``GuardedBackend`` wraps any backend:

- a call that fails with a *retryable* ``BackendError`` (rate limit, timeout, 5xx) is tried again
  with exponential backoff and jitter (``RetryPolicy.backoff_s``), up to ``RetryPolicy.attempts``
  tries; other errors are not retried, and neither is a streamed call that already sent text (the
  text would repeat);
- after ``BreakerPolicy.failures`` failed calls in a row the breaker opens: calls fail at once
  with ``BackendUnavailable`` until ``cooldown_s`` has passed; then one trial call is let through
  (half-open) and its outcome closes or re-opens the breaker.

A guard is a plain value an expert holds: ``LLMExpert`` puts each backend it is given behind a new
guard with the default policies, unless it is a ``GuardedBackend`` already; experts that should
share a breaker share one guard (the YAML builder gives every expert naming a backend the same
guard, with the policies of its ``retry:`` and ``circuit:``). A backend that retries on its own
(``SelfRetrying``, e.g. ``LiteLLMBackend``'s ``num_retries``) has that turned off behind a guard, so
a call is tried at most ``RetryPolicy.attempts`` times.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol, runtime_checkable

import anyio

from .backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from .bounds import Ge, Gt, check_bounds
from .errors import BackendError, BackendUnavailable
from .logging import get_logger
from .types import Message

if TYPE_CHECKING:
    from .residency import Residency

__all__ = ["BreakerPolicy", "CircuitBreaker", "GuardedBackend", "RetryPolicy", "SelfRetrying"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of retryable errors (YAML ``retry:`` of a backend).

    Attributes:
        attempts: most tries per call (1: no retry).
        initial_s: the first backoff; it doubles each time, up to ``max_s``.
        max_s: the longest backoff.
        jitter_s: up to this much random time is added to each backoff.
    """

    attempts: Annotated[int, Ge(1)] = 3
    initial_s: Annotated[float, Ge(0.0)] = 0.5
    max_s: Annotated[float, Ge(0.0)] = 8.0
    jitter_s: Annotated[float, Ge(0.0)] = 0.5

    def __post_init__(self) -> None:
        check_bounds("retry", self, {"max_s": self.max_s >= self.initial_s})

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed try ``attempt`` (1-based): ``initial_s · 2^(attempt − 1)``, at most
        ``max_s``, plus a uniform jitter in ``[0, jitter_s]``."""
        return min(self.initial_s * 2 ** (attempt - 1), self.max_s) + random.uniform(0, self.jitter_s)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a backend's circuit opens and for how long (YAML ``circuit:`` of a backend).

    Attributes:
        failures: failed calls in a row that open the circuit.
        cooldown_s: how long it stays open before a trial call.
    """

    failures: Annotated[int, Ge(1)] = 5
    cooldown_s: Annotated[float, Gt(0.0)] = 30.0

    def __post_init__(self) -> None:
        check_bounds("circuit", self)


class CircuitBreaker:
    """Counts failures in a row; open for ``cooldown_s`` after ``failures`` of them.

    Args:
        policy: thresholds.
        clock: seconds (``time.monotonic`` by default; tests pass a fake one).
    """

    def __init__(self, policy: BreakerPolicy | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.policy = policy or BreakerPolicy()
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial = False  # a half-open trial call is in flight

    @property
    def state(self) -> str:
        """``closed``, ``open`` (cooling down) or ``half_open`` (a trial call may go through)."""
        if self.opened_at is None:
            return "closed"
        return "open" if self.clock() < self.recovers_at else "half_open"

    @property
    def recovers_at(self) -> float:
        """When the cooldown ends (``clock()`` time); now for a closed breaker."""
        if self.opened_at is None:
            return self.clock()
        return self.opened_at + self.policy.cooldown_s

    def available(self) -> bool:
        """Whether a call may go through now (closed, or half-open with no trial in flight)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._trial)

    def acquire(self) -> bool:
        """Claims the right to call: ``False`` while open (or while a half-open trial runs)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        if self._trial or self.failures >= self.policy.failures:
            self.opened_at = self.clock()
        self._trial = False

    def cancelled(self) -> None:
        """A call was cancelled: no verdict on the backend (a half-open trial may run again)."""
        self._trial = False


@runtime_checkable
class SelfRetrying(Protocol):
    """A backend that can retry failed calls itself (``LiteLLMBackend``'s ``num_retries``)."""

    def without_retries(self) -> Backend:
        """The same backend trying each call once (itself, when it does already)."""
        ...


class GuardedBackend:
    """A backend with retries and a circuit breaker in front (see the module docstring).

    It is a ``Backend`` (``name``, ``modalities``, ``complete``, ``load``, ``unload``) and tells
    whether a call may go through now (``available``, ``recovers_at``); the backend it guards is
    ``inner`` (without its own retries, when it is ``SelfRetrying``).

    Args:
        inner: the backend.
        retry: retry policy (``RetryPolicy(attempts=1)``: no retries).
        breaker: circuit-breaker policy.
        residency: the ``Residency`` that loads ``inner``'s model (it wraps it in a
            ``ResidentBackend``), if any: an expert chooses among backends under one residency
            by the permission function.
        clock: seconds for the breaker (``time.monotonic``).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        residency: Residency | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner.without_retries() if isinstance(inner, SelfRetrying) else inner
        self.name = inner.name
        self.modalities = inner.modalities
        self.retry = retry or RetryPolicy()
        self.breaker = CircuitBreaker(breaker, clock=clock)
        self.residency = residency

    def rewrapped(self, inner: Backend) -> GuardedBackend:
        """A guard with these policies and residency, and a fresh breaker, around ``inner``."""
        return GuardedBackend(
            inner,
            retry=self.retry,
            breaker=self.breaker.policy,
            residency=self.residency,
            clock=self.breaker.clock,
        )

    @property
    def available(self) -> bool:
        """Whether a call may go through now."""
        return self.breaker.available()

    @property
    def recovers_at(self) -> float:
        """``time.monotonic()`` time at which the breaker lets a call through again."""
        return self.breaker.recovers_at

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        if not self.breaker.acquire():
            wait = max(self.breaker.recovers_at - self.breaker.clock(), 0.0)
            raise BackendUnavailable(
                f"{self.name} is cooling down after {self.breaker.failures} failures in a row "
                f"(retry in {wait:.1f} s)",
                backend=self.name,
                recovers_at=self.breaker.recovers_at,
            )
        sent = False

        async def forward(text: str) -> None:
            nonlocal sent
            sent = True
            assert on_chunk is not None
            await on_chunk(text)

        policy = self.retry
        attempt = 1
        try:
            while True:
                try:
                    completion = await self.inner.complete(
                        messages, settings=settings, on_chunk=forward if on_chunk is not None else None
                    )
                    break
                except BackendError as exc:
                    if not exc.retryable or sent or attempt >= policy.attempts:
                        raise
                    log.info("backend.retry", backend=self.name, attempt=attempt, error=str(exc))
                await anyio.sleep(policy.backoff_s(attempt))
                attempt += 1
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.breaker.failure()
                if self.breaker.state != "closed":
                    log.warning("backend.circuit_open", backend=self.name, failures=self.breaker.failures)
            else:
                self.breaker.cancelled()
            raise
        self.breaker.success()
        return completion

    async def load(self) -> None:
        await self.inner.load()

    async def unload(self) -> None:
        await self.inner.unload()

    def __repr__(self) -> str:
        return f"GuardedBackend({self.inner!r})"
