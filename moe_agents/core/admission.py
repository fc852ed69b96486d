"""Admission: how many requests a pipeline answers at once, how many may wait, and the deadline of
each, as one async context manager around a request."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio

from ..errors import ConfigError, DeadlineExceeded, Overloaded
from ..logging import get_logger

__all__ = ["Admission"]

log = get_logger(__name__)


class Admission:
    """Slots, a bounded queue and a deadline for whole requests.

    Args:
        request_timeout_s: deadline of a whole request, the wait for a slot included
            (``DeadlineExceeded``); ``None``: none.
        max_concurrency: most requests admitted at once; ``None``: no limit.
        max_queue: requests that may wait for a slot when ``max_concurrency`` are running; one
            more fails at once with ``Overloaded`` (memory stays bounded).

    Raises:
        ConfigError: a bound is out of range.
    """

    def __init__(
        self,
        *,
        request_timeout_s: float | None = None,
        max_concurrency: int | None = None,
        max_queue: int = 0,
    ) -> None:
        if request_timeout_s is not None and request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {max_queue}")
        self.request_timeout_s = request_timeout_s
        self.max_queue = max_queue
        self._slots = anyio.CapacityLimiter(max_concurrency) if max_concurrency is not None else None
        self._waiting = 0
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Requests admitted or waiting for a slot now."""
        return self._in_flight

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Holds a slot for the block, within the request's deadline.

        Raises:
            Overloaded: every slot is taken and ``max_queue`` requests are waiting already.
            DeadlineExceeded: the wait and the block ran past ``request_timeout_s``.
        """
        self._in_flight += 1
        try:
            with self._deadline():
                async with self._slot():
                    yield
        finally:
            self._in_flight -= 1

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        try:
            self._slots.acquire_nowait()
        except anyio.WouldBlock:
            if self._waiting >= self.max_queue:
                log.warning("pipeline.overloaded", running=self._slots.borrowed_tokens, waiting=self._waiting)
                raise Overloaded(
                    f"overloaded: {self._slots.borrowed_tokens} requests running and {self._waiting} "
                    f"waiting (max_concurrency {int(self._slots.total_tokens)}, max_queue {self.max_queue})"
                ) from None
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        if self.request_timeout_s is None:
            yield
            return
        try:
            with anyio.fail_after(self.request_timeout_s):
                yield
        except TimeoutError:
            raise DeadlineExceeded(
                f"the request ran past its deadline of {self.request_timeout_s} s",
                timeout_s=self.request_timeout_s,
            ) from None
