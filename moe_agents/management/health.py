"""Health checks of (remote) experts: probes of idle experts plus the outcomes of real calls.

An expert turns unhealthy after ``failures_to_unhealthy`` failures in a row and healthy again
after ``successes_to_healthy`` successes in a row; a failure is a probe that returns ``False``,
raises or runs past ``timeout_s``, or a real call that failed (``note_call``). Only experts not
heard from (by a call or a probe) for ``idle_s`` are probed: busy experts are judged by their
traffic. Transitions are published on the event bus as ``health.unhealthy`` / ``health.healthy``.
An expert never seen is healthy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import anyio

from ..bounds import Ge, Gt, check_bounds
from ..logging import get_logger
from .events import EventBus

__all__ = ["HealthMonitor", "HealthPolicy", "Probe"]

log = get_logger(__name__)

Probe = Callable[[str], Awaitable[bool]]
"""Checks one expert by name: ``True`` when it answered well."""


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """How often and how strictly experts are checked.

    Attributes:
        interval_s: time between two rounds of checks (``HealthMonitor.run``).
        idle_s: only experts not heard from for this long are probed.
        failures_to_unhealthy: failures in a row that make a healthy expert unhealthy.
        successes_to_healthy: successes in a row that make an unhealthy expert healthy.
        timeout_s: deadline of one probe; a probe past it failed.
    """

    interval_s: Annotated[float, Gt(0.0)] = 30.0
    idle_s: Annotated[float, Ge(0.0)] = 10.0
    failures_to_unhealthy: Annotated[int, Ge(1)] = 2
    successes_to_healthy: Annotated[int, Ge(1)] = 1
    timeout_s: Annotated[float, Gt(0.0)] = 10.0

    def __post_init__(self) -> None:
        check_bounds("health", self)


@dataclass(slots=True)
class _State:
    healthy: bool = True
    failures: int = 0
    successes: int = 0
    last_seen: float | None = None


class HealthMonitor:
    """Tracks the health of experts by name (see the module docstring).

    Args:
        policy: thresholds and timings.
        probe: checks one expert (a tiny request to its backend, say).
        bus: where transitions are published (``None``: they are only logged).
        clock: seconds, for idleness (``time.monotonic``; tests pass a fake one). Probe deadlines
            and the pause between rounds use the event loop's clock.
    """

    def __init__(
        self,
        policy: HealthPolicy | None = None,
        *,
        probe: Probe,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or HealthPolicy()
        self.probe = probe
        self.bus = bus
        self.clock = clock
        self._states: dict[str, _State] = {}

    def healthy(self, name: str) -> bool:
        """Whether ``name`` is healthy (an expert never seen is)."""
        state = self._states.get(name)
        return state is None or state.healthy

    def status(self) -> dict[str, str]:
        """``"healthy"`` or ``"unhealthy"`` for every expert seen, by name."""
        return {name: "healthy" if s.healthy else "unhealthy" for name, s in self._states.items()}

    def note_call(self, name: str, ok: bool) -> None:
        """Records the outcome of a real call to ``name``; it counts as a probe."""
        self._outcome(name, ok, source="call")

    def forget(self, name: str) -> None:
        """Drops what is known about ``name`` (a removed or replaced expert)."""
        self._states.pop(name, None)

    async def check(self, names: Sequence[str]) -> None:
        """Probes, concurrently, every expert of ``names`` not heard from for ``idle_s``.

        A probe that raises or times out is a failure; one probe's failure never stops another.
        """
        now = self.clock()
        due = []
        for name in dict.fromkeys(names):
            last = self._states[name].last_seen if name in self._states else None
            if last is None or now - last >= self.policy.idle_s:
                due.append(name)
        if not due:
            return
        async with anyio.create_task_group() as tg:
            for name in due:
                tg.start_soon(self._probe, name)

    async def run(self, names_fn: Callable[[], Sequence[str]]) -> None:
        """Checks ``names_fn()`` every ``interval_s``, forever (run it in a task group).

        The first round starts after one interval; a round that fails is logged and skipped.
        """
        while True:
            await anyio.sleep(self.policy.interval_s)
            try:
                await self.check(names_fn())
            except Exception as exc:
                log.warning("health.check_failed", error=f"{type(exc).__name__}: {exc}")

    async def _probe(self, name: str) -> None:
        start = time.perf_counter()
        error: str | None = None
        try:
            with anyio.fail_after(self.policy.timeout_s):
                ok = bool(await self.probe(name))
        except TimeoutError:
            ok, error = False, f"timed out after {self.policy.timeout_s} s"
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        log.debug(
            "health.probed", expert=name, ok=ok, error=error, ms=round((time.perf_counter() - start) * 1e3, 2)
        )
        self._outcome(name, ok, source="probe", error=error)

    def _outcome(self, name: str, ok: bool, *, source: str, error: str | None = None) -> None:
        state = self._states.setdefault(name, _State())
        state.last_seen = self.clock()
        p = self.policy
        if ok:
            state.failures, state.successes = 0, state.successes + 1
            if not state.healthy and state.successes >= p.successes_to_healthy:
                state.healthy = True
                self._publish("health.healthy", expert=name, successes=state.successes, source=source)
        else:
            state.failures, state.successes = state.failures + 1, 0
            if state.healthy and state.failures >= p.failures_to_unhealthy:
                state.healthy = False
                self._publish(
                    "health.unhealthy", expert=name, failures=state.failures, source=source, error=error
                )

    def _publish(self, kind: str, **data: object) -> None:
        if self.bus is not None:
            self.bus.publish(kind, **data)
        else:
            log.info(kind, **data)

    def __repr__(self) -> str:
        return f"HealthMonitor(status={self.status()})"
