"""Failure handling per backend: retries with backoff for retryable errors, and a circuit breaker.

``GuardedBackend`` wraps any backend:

- a call that fails with a *retryable* ``BackendError`` (rate limit, timeout, 5xx) is tried again
  with exponential backoff and jitter (tenacity), up to ``RetryPolicy.attempts`` tries; other errors
  are not retried, and neither is a streamed call that already sent text (the text would repeat);
- after ``BreakerPolicy.failures`` failed calls in a row the breaker opens: calls fail at once
  with ``BackendUnavailable`` until ``cooldown_s`` has passed; then one trial call is let through
  (half-open) and its outcome closes or re-opens the breaker.

``LLMExpert`` guards its backends with the default policies (one guard per backend object, so
experts sharing a backend share its breaker); YAML sets the policies per backend with ``retry:``
and ``circuit:``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from .backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from .errors import BackendError, BackendUnavailable, check_settings
from .logging import get_logger
from .types import Message

__all__ = ["BreakerPolicy", "CircuitBreaker", "GuardedBackend", "RetryPolicy", "guard"]

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

    attempts: int = 3
    initial_s: float = 0.5
    max_s: float = 8.0
    jitter_s: float = 0.5

    def __post_init__(self) -> None:
        checks = {
            "attempts": self.attempts >= 1,
            "initial_s": self.initial_s >= 0.0,
            "max_s": self.max_s >= self.initial_s,
            "jitter_s": self.jitter_s >= 0.0,
        }
        check_settings("retry", self, checks)


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a backend's circuit opens and for how long (YAML ``circuit:`` of a backend).

    Attributes:
        failures: failed calls in a row that open the circuit.
        cooldown_s: how long it stays open before a trial call.
    """

    failures: int = 5
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        check_settings("circuit", self, {"failures": self.failures >= 1, "cooldown_s": self.cooldown_s > 0.0})


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


class GuardedBackend:
    """A backend with retries and a circuit breaker in front (see the module docstring).

    Attributes of the wrapped backend that this class does not define (``nbytes``, ``residency``,
    ...) are read through.

    Args:
        inner: the backend.
        retry: retry policy (``RetryPolicy(attempts=1)``: no retries).
        breaker: circuit-breaker policy.
        clock: seconds for the breaker (``time.monotonic``).
    """

    def __init__(
        self,
        inner: Backend,
        *,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.modalities = inner.modalities
        self.retry = retry or RetryPolicy()
        self.breaker = CircuitBreaker(breaker, clock=clock)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (during unpickling or a failed __init__)
            raise AttributeError(name)
        return getattr(self.inner, name)

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

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, BackendError) and exc.retryable and not sent

        policy = self.retry
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.attempts),
            wait=wait_exponential(multiplier=policy.initial_s, max=policy.max_s)
            + wait_random(0, policy.jitter_s),
            retry=retry_if_exception(retryable),
            before_sleep=lambda state: log.info(
                "backend.retry",
                backend=self.name,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    completion = await self.inner.complete(
                        messages, settings=settings, on_chunk=forward if on_chunk is not None else None
                    )
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.breaker.failure()
                if self.breaker.state != "closed":
                    log.warning("backend.circuit_open", backend=self.name, failures=self.breaker.failures)
            else:  # cancelled: no verdict on the backend
                self.breaker._trial = False
            raise
        self.breaker.success()
        return completion

    async def load(self) -> None:
        await self.inner.load()

    async def unload(self) -> None:
        await self.inner.unload()

    def __repr__(self) -> str:
        return f"GuardedBackend({self.inner!r})"


_GUARDS: weakref.WeakKeyDictionary[Any, GuardedBackend] = weakref.WeakKeyDictionary()


def guard(backend: Backend) -> Backend:
    """``backend`` behind retries and a circuit breaker with the default policies; a backend that
    is guarded already is returned as is, and one backend object always gets the same guard."""
    if isinstance(backend, GuardedBackend):
        return backend
    try:
        found = _GUARDS.get(backend)
    except TypeError:  # not weak-referenceable: guard it without sharing
        return GuardedBackend(backend)
    if found is None:
        found = _GUARDS[backend] = GuardedBackend(backend)
    return found
