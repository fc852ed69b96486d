"""An in-process event bus: management components publish what happened, anyone may subscribe.

``publish`` is synchronous and never blocks: each subscriber has a bounded buffer, and a subscriber
whose buffer is full misses the event (its ``dropped`` count goes up), so a slow or forgotten
subscriber costs at most ``max_buffer`` events of memory. Every event is also logged with
structlog under its kind.

Event kinds used by ``moe_agents.management``:

- ``expert.registered``, ``expert.removed``, ``expert.replaced``, ``expert.disabled``,
  ``expert.enabled``, ``expert.policy_changed`` (published by the pipeline's roster)
- ``scale.up``, ``scale.down`` (see ``Decision.event_kind``)
- ``health.unhealthy``, ``health.healthy`` (published by ``HealthMonitor``)

    >>> bus = EventBus()
    >>> async with bus.subscribe({"health.unhealthy"}) as events:   # doctest: +SKIP
    ...     async for event in events:
    ...         print(event.data["expert"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import ConfigError
from ..logging import get_logger

__all__ = ["Event", "EventBus", "Subscription"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened.

    Attributes:
        kind: dotted name (``health.unhealthy``).
        data: the event's fields (read-only).
        ts: when it was published (the bus's clock; unix seconds by default).
    """

    kind: str
    data: Mapping[str, Any]
    ts: float


class Subscription:
    """The events of some kinds, as an async iterator; made by ``EventBus.subscribe``.

    Use it as an async context manager (leaving it unsubscribes) or call ``close``. Iteration ends
    when the subscription or the bus is closed (events already buffered are delivered first when
    the bus closes).

    Attributes:
        kinds: the kinds delivered (``None``: all).
        dropped: events missed because the buffer was full.
    """

    def __init__(self, bus: EventBus, kinds: frozenset[str] | None, max_buffer: int) -> None:
        self.kinds = kinds
        self.dropped = 0
        self._bus = bus
        self._send: MemoryObjectSendStream[Event]
        self._receive: MemoryObjectReceiveStream[Event]
        self._send, self._receive = anyio.create_memory_object_stream[Event](max_buffer_size=max_buffer)

    def wants(self, kind: str) -> bool:
        """Whether events of ``kind`` are delivered (a kind ``"health.*"`` matches ``health.<any>``)."""
        if self.kinds is None or kind in self.kinds:
            return True
        return any(k.endswith(".*") and kind.startswith(k[:-1]) for k in self.kinds)

    @property
    def pending(self) -> int:
        """Events buffered and not yet read."""
        return self._receive.statistics().current_buffer_used

    def _offer(self, event: Event) -> bool:
        """Buffers ``event``; ``False`` when this subscription is closed."""
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def _end(self) -> None:
        self._send.close()

    def close(self) -> None:
        """Unsubscribes and drops whatever is buffered."""
        self._bus._unsubscribe(self)
        self._send.close()
        self._receive.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = None if self.kinds is None else sorted(self.kinds)
        return f"Subscription(kinds={kinds}, pending={self.pending}, dropped={self.dropped})"


class EventBus:
    """Publish/subscribe inside one process (see the module docstring).

    ``publish`` must be called from the event loop's thread (or with no loop running at all).

    Args:
        clock: the events' timestamps (``time.time`` by default).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._subscriptions: list[Subscription] = []

    @property
    def subscriptions(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def publish(self, kind: str, /, **data: Any) -> Event:
        """Delivers an event to every open subscription that wants its kind, and logs it.

        Never blocks: a subscription whose buffer is full misses the event. The field name ``event``
        is reserved by structlog.

        Returns:
            The event published.
        """
        event = Event(kind, MappingProxyType(dict(data)), self.clock())
        for sub in list(self._subscriptions):
            if sub.wants(kind) and not sub._offer(event):
                self._unsubscribe(sub)
        log.info(kind, **data)
        return event

    def subscribe(self, kinds: Collection[str] | None = None, *, max_buffer: int = 256) -> Subscription:
        """Opens a subscription; events published from now on are buffered for it.

        Args:
            kinds: the event kinds wanted (``"health.*"`` for every ``health.`` kind); ``None``: all.
            max_buffer: most events buffered before newer ones are dropped (at least 1).
        """
        if max_buffer < 1:
            raise ConfigError(f"max_buffer must be >= 1, got {max_buffer}")
        if isinstance(kinds, str):
            raise ConfigError(f"kinds must be a collection of kinds, not the string {kinds!r}")
        sub = Subscription(self, None if kinds is None else frozenset(kinds), max_buffer)
        self._subscriptions.append(sub)
        return sub

    def close(self) -> None:
        """Ends every open subscription: each delivers what it has buffered, then stops iterating."""
        subs, self._subscriptions = self._subscriptions, []
        for sub in subs:
            sub._end()

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def __repr__(self) -> str:
        return f"EventBus(subscriptions={self.subscriptions})"
