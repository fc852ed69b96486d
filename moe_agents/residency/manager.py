"""Byte-budgeted model residency with hysteresis (the seed's "model zoo").

Local models take memory; a ``Residency`` keeps the set of loaded models within a byte budget:

- loads run one at a time (an ``anyio.Lock``), and the bytes of resident models plus the one being
  loaded never exceed ``budget_bytes``;
- a model in use (inside ``async with residency.use(name)``) is pinned and never evicted; to make
  room, the least recently used unpinned models are unloaded; when the pinned ones leave no room,
  ``use`` waits for a pin to be released (up to ``wait_s``);
- the cost of using a model that is not resident is its swap time, ``bytes / bandwidth`` seconds,
  with the bandwidth measured from real loads (total bytes over total seconds;
  ``bandwidth_bytes_per_s`` until the first load). The swap time (times ``swap_cost_weight``, 1 by
  default) feeds ``cheapness`` and residency feeds ``persistence`` through the one ``permission``
  function, so ``choose`` picks among several models of an expert by the same rule as every other
  selector;
- with a swap budget, once the seconds spent loading in the last ``swap_window_s`` reach
  ``swap_budget_s``, every non-resident model costs ``BLOCKED_COST_S`` (it is still chosen when no
  resident one can serve, since the order among the non-resident ones is kept).

With ``simulate=True`` nothing is loaded: ``use`` does the bookkeeping and accounts
``bytes / bandwidth`` seconds per load (the residency benchmark runs on it).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import numpy as np

from ..errors import ConfigError, RunError
from ..logging import get_logger
from ..routing.permission import permission
from .config import ResidencyConfig
from .metrics import ResidencyMetrics
from .model import Model, nbytes_of

__all__ = ["BLOCKED_COST_S", "Residency"]

log = get_logger(__name__)

BLOCKED_COST_S = 1e6
"""The cost in seconds of a non-resident model once the swap budget is spent."""


@dataclass(slots=True)
class _Entry:
    model: Model
    size: int
    state: str = "absent"  # absent | loading | resident
    pins: int = 0


class Residency:
    """Keeps registered models resident within a byte budget; see the module docstring.

    Args:
        config: budget and costs.
        simulate: do the bookkeeping only; ``load``/``unload`` are never called.
        clock: seconds, for timing loads and the swap-budget window (a benchmark passes a virtual one).

    Attributes:
        config: the settings.
        metrics: counters since creation.
    """

    def __init__(
        self,
        config: ResidencyConfig,
        *,
        simulate: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.metrics = ResidencyMetrics()
        self._simulate = simulate
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident names, least recently used first
        self._lock = anyio.Lock()
        self._released = anyio.Event()
        self._loads: deque[tuple[float, float]] = deque()  # (clock at the end of a load, seconds)
        self._measured_bytes = 0
        self._measured_s = 0.0

    def register(self, model: Model, *, size_bytes: int | None = None) -> None:
        """Adds a model; one already loaded counts as resident at once. Registering the same model
        object again does nothing.

        Args:
            model: the model; its ``name`` must be unique here.
            size_bytes: its size; defaults to its ``nbytes``. It is re-read from ``nbytes`` after
                each real load.

        Raises:
            ConfigError: the name is taken, the size is unknown or not positive, the model alone
                exceeds the budget, or it is loaded already and does not fit.
        """
        name = model.name
        if name in self._entries and self._entries[name].model is model:
            return
        if name in self._entries:
            raise ConfigError(f"residency: model {name!r} is registered twice")
        size = size_bytes if size_bytes is not None else nbytes_of(model)
        if not size or size <= 0:
            raise ConfigError(f"residency: size of model {name!r} is unknown; pass size_bytes")
        if size > self.config.budget_bytes:
            raise ConfigError(
                f"residency: model {name!r} ({size} bytes) exceeds the budget "
                f"({self.config.budget_bytes} bytes)"
            )
        entry = _Entry(model, size)
        if getattr(model, "loaded", False):
            if self.used_bytes + size > self.config.budget_bytes:
                raise ConfigError(f"residency: model {name!r} is loaded already and does not fit the budget")
            entry.state = "resident"
            self._lru[name] = None
        self._entries[name] = entry

    @property
    def names(self) -> tuple[str, ...]:
        """The registered models, in registration order."""
        return tuple(self._entries)

    @property
    def used_bytes(self) -> int:
        """Bytes of resident models plus the one being loaded."""
        return sum(e.size for e in self._entries.values() if e.state != "absent")

    @property
    def bandwidth(self) -> float:
        """Load bandwidth in bytes per second: measured once a real load happened, else the guess."""
        if self._measured_s > 0.0:
            return self._measured_bytes / self._measured_s
        return self.config.bandwidth_bytes_per_s

    def size(self, name: str) -> int:
        """The size in bytes a model is accounted with."""
        return self._entry(name).size

    def pins(self, name: str) -> int:
        """How many ``use`` blocks hold the model now."""
        return self._entry(name).pins

    def resident(self, names: Sequence[str]) -> np.ndarray:
        """``(E,)`` bool: whether each model is loaded now."""
        return np.array([self._entry(n).state == "resident" for n in names], dtype=bool)

    def swap_cost(self, names: Sequence[str]) -> np.ndarray:
        """``(E,)`` seconds to load each model (0 if resident; ``BLOCKED_COST_S`` once the swap
        budget is spent)."""
        blocked = self.swap_budget_spent
        bandwidth = self.bandwidth
        out = np.zeros(len(names))
        for i, name in enumerate(names):
            entry = self._entry(name)
            if entry.state != "resident":
                out[i] = BLOCKED_COST_S if blocked else entry.size / bandwidth
        return out

    @property
    def swap_budget_spent(self) -> bool:
        """Whether the seconds spent loading in the current window reached ``swap_budget_s``."""
        budget = self.config.swap_budget_s
        return budget is not None and self._window_load_s() >= budget

    def scores(
        self, names: Sequence[str], expertise: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(cheapness, persistence, permission)``, each ``(E,)``, from ``permission()`` with
        cost = ``swap_cost_weight`` × swap seconds (``BLOCKED_COST_S`` unweighted).

        Args:
            names: candidate models.
            expertise: ``(E,)`` how good each is for the query (router score or trust).
        """
        expertise = np.asarray(expertise, dtype=np.float64)
        if expertise.shape != (len(names),):
            raise ValueError(f"expertise has shape {expertise.shape}, expected ({len(names)},)")
        seconds = self.swap_cost(names)
        cost = np.where(seconds >= BLOCKED_COST_S, seconds, seconds * self.config.swap_cost_weight)
        cheapness, persistence, perm = permission(
            expertise, cost, self.resident(names), self.config.hysteresis
        )
        return np.asarray(cheapness), np.asarray(persistence), perm

    def choose(self, names: Sequence[str], expertise: np.ndarray) -> str:
        """The model with the highest permission (the first on ties)."""
        if not names:
            raise ValueError("choose() needs at least one model")
        return names[int(np.argmax(self.scores(names, expertise)[2]))]

    def note_selection(self, chosen: str, best_trusted: str | None) -> None:
        """Counts a quality cost when ``chosen`` is not ``best_trusted`` (the most trusted model,
        passed over because another one was resident); ``None`` means trust is not known."""
        if best_trusted is None:
            return
        self.metrics.compared += 1
        if chosen != best_trusted:
            self.metrics.quality_costs += 1

    @asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[Model]:
        """Makes ``name`` resident and pins it for the block.

        Yields:
            the model, loaded.

        Raises:
            ConfigError: ``name`` is not registered, or measured after loading it exceeds the budget.
            RunError: it did not fit within ``wait_s`` because the other models are pinned.
        """
        entry = self._entry(name)
        self.metrics.selections += 1
        if entry.state == "resident":
            self.metrics.hits += 1
            entry.pins += 1
        else:
            self.metrics.misses += 1
            await self._admit(entry)  # pins it
        self._lru.move_to_end(name)
        try:
            yield entry.model
        finally:
            entry.pins -= 1
            if entry.state == "resident":
                self._lru.move_to_end(name)
            if entry.pins == 0:
                self._released.set()
                self._released = anyio.Event()

    async def clear(self) -> None:
        """Unloads every resident model that is not pinned."""
        async with self._lock:
            victims = [n for n in self._lru if self._entries[n].pins == 0]
            await self._evict(victims)

    async def evict(self, name: str) -> None:
        """Unloads ``name`` now if it is resident and not pinned."""
        entry = self._entry(name)
        async with self._lock:
            if name in self._lru and entry.pins == 0:
                await self._evict([name])

    async def _admit(self, entry: _Entry) -> None:
        """Loads ``entry`` (one load at a time), evicting least recently used unpinned models."""
        name = entry.model.name
        async with self._lock:
            if entry.state == "resident":  # loaded by a concurrent call meanwhile
                entry.pins += 1
                return
            try:
                with anyio.fail_after(self.config.wait_s):
                    while (victims := self._victims(entry.size, exclude=name)) is None:
                        await self._released.wait()
            except TimeoutError as exc:
                pinned = sorted(n for n in self._lru if self._entries[n].pins)
                raise RunError(
                    f"residency: model {name!r} ({entry.size} bytes) does not fit the budget "
                    f"({self.config.budget_bytes} bytes) within {self.config.wait_s} s; pinned: {pinned}"
                ) from exc
            await self._evict(victims)
            entry.pins += 1
            entry.state = "loading"
            try:
                await self._load(entry)
            except BaseException:
                entry.pins -= 1
                entry.state = "absent"
                self._lru.pop(name, None)
                if not self._simulate:
                    with anyio.CancelScope(shield=True):
                        await entry.model.unload()
                raise

    async def _load(self, entry: _Entry) -> None:
        model = entry.model
        if self._simulate:
            seconds = entry.size / self.bandwidth
        else:
            started = self._clock()
            await model.load()
            seconds = self._clock() - started
            measured = nbytes_of(model)
            if measured and measured != entry.size:
                if measured > self.config.budget_bytes:
                    raise ConfigError(
                        f"residency: model {model.name!r} measured {measured} bytes after loading, "
                        f"more than the budget ({self.config.budget_bytes} bytes)"
                    )
                log.info("residency.resized", model=model.name, declared=entry.size, measured=measured)
                entry.size = measured
            if seconds > 0.0:
                self._measured_bytes += entry.size
                self._measured_s += seconds
        entry.state = "resident"
        self._lru[model.name] = None
        m = self.metrics
        m.swaps += 1
        m.bytes_loaded += entry.size
        m.load_s += seconds
        self._loads.append((self._clock(), seconds))
        if not self._simulate:
            log.info(
                "residency.loaded",
                model=model.name,
                nbytes=entry.size,
                s=round(seconds, 3),
                used_bytes=self.used_bytes,
                bandwidth=round(self.bandwidth),
            )
        over = self._victims(0, exclude=model.name)  # a measured size may be larger than declared
        if over:
            await self._evict(over)
        elif over is None:
            log.warning("residency.over_budget", model=model.name, used_bytes=self.used_bytes)

    def _victims(self, size: int, *, exclude: str) -> list[str] | None:
        """Least recently used unpinned models to unload so ``size`` more bytes fit; ``None`` when
        unloading every unpinned one would not be enough."""
        free = self.config.budget_bytes - self.used_bytes
        victims: list[str] = []
        for n in self._lru:
            if free >= size:
                break
            entry = self._entries[n]
            if entry.pins == 0 and n != exclude:
                victims.append(n)
                free += entry.size
        return victims if free >= size else None

    async def _evict(self, names: list[str]) -> None:
        # Every victim leaves the resident set before the first unload is awaited, so no
        # concurrent ``use`` can pin one of them meanwhile.
        entries = [self._entries[n] for n in names]
        for entry in entries:
            entry.state = "absent"
            del self._lru[entry.model.name]
        for entry in entries:
            self.metrics.evictions += 1
            if not self._simulate:
                await entry.model.unload()
                log.info("residency.evicted", model=entry.model.name, nbytes=entry.size)

    def _window_load_s(self) -> float:
        start = self._clock() - self.config.swap_window_s
        while self._loads and self._loads[0][0] < start:
            self._loads.popleft()
        return sum(s for _, s in self._loads)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"residency: unknown model {name!r}; known: {sorted(self._entries)}") from None
