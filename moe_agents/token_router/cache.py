"""A per-layer expert cache in counting mode (simulation): which experts would be resident.

Policies:
    ``lru``: evict the least recently used expert.
    ``lru+hysteresis``: a segmented LRU: an expert that has been hit since it was loaded has proved
        itself and is evicted only when every resident expert has; among the unproved ones (or
        among all, if none is unproved) the least recently used goes.
    ``belady``: the offline optimum: evict the expert whose next use is farthest in the future.
        It needs the whole trace up front (``future``); ``belady_hit_rate`` replays one.

The experts a token needs are loaded together: none of them is evicted to make room for another
of the same token, unless the capacity is below ``k``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch

from ..errors import ConfigError, check_settings
from .metrics import CacheStats

__all__ = ["POLICIES", "ExpertCache", "ResidencySource", "belady_hit_rate"]

POLICIES = ("lru", "lru+hysteresis", "belady")
_NEVER = torch.iinfo(torch.int64).max


class ResidencySource(Protocol):
    """What ``patch`` needs of a cache: the resident experts of a layer, and the final choices.

    ``ExpertCache`` (simulation) and ``OffloadHandle`` (real offload) both provide it.
    """

    @property
    def num_layers(self) -> int: ...

    @property
    def num_experts(self) -> int: ...

    def resident_mask(self, layer: int) -> torch.Tensor:
        """``(E,)`` bool, the experts resident in ``layer`` now (read-only; it may be a live view)."""
        ...

    def access(self, layer: int, experts: torch.Tensor) -> object:
        """Told the ``(T, k)`` experts a batch of ``layer`` will use, in token order."""
        ...


class ExpertCache:
    """At most ``capacity`` resident experts per layer, updated from the experts tokens need.

    Args:
        num_layers: MoE layers.
        num_experts: experts per layer.
        capacity: resident experts per layer (C).
        policy: one of ``POLICIES``.
        future: for ``belady`` only: per layer, the ``(T, k)`` experts every token will need, in
            the order ``access`` will be called with them.
    """

    def __init__(
        self,
        num_layers: int,
        num_experts: int,
        capacity: int,
        policy: str = "lru",
        *,
        future: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.capacity = capacity
        self.policy = policy
        check_settings(
            "expert cache",
            self,
            {
                "num_layers": num_layers >= 1,
                "num_experts": num_experts >= 1,
                "capacity": 1 <= capacity <= num_experts,
                "policy": policy in POLICIES,
            },
        )
        if (policy == "belady") != (future is not None):
            raise ConfigError("the belady policy needs the future trace (future=...), and only it takes one")
        self._future = None if future is None else [torch.as_tensor(f).long().cpu() for f in future]
        self._next_use: list[torch.Tensor] = []
        if self._future is not None:
            if len(self._future) != num_layers:
                raise ConfigError(f"future has {len(self._future)} layers, the cache {num_layers}")
            self._next_use = [_next_use(f, num_experts) for f in self._future]
        self._resident: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(num_layers)]  # id → hits
        self._mask = torch.zeros(num_layers, num_experts, dtype=torch.bool)  # the same, as tensors
        self._just_evicted: list[set[int]] = [set() for _ in range(num_layers)]
        self._tokens = [0] * num_layers
        self._load = torch.zeros(num_layers, num_experts, dtype=torch.int64)
        self.hits = self.misses = self.evictions = self.repicks = 0

    def resident_mask(self, layer: int) -> torch.Tensor:
        """``(E,)`` bool: the experts resident in ``layer`` now (a live view: read it, don't keep it)."""
        return self._mask[layer]

    def access(self, layer: int, experts_needed: torch.Tensor) -> tuple[int, int]:
        """Serves tokens in order: each needs the experts of one row of ``experts_needed`` ``(T, k)``.

        Returns:
            ``(hits, misses)`` of this call.
        """
        rows = torch.as_tensor(experts_needed).long().cpu().reshape(-1, experts_needed.shape[-1])
        if self._future is not None:
            start = self._tokens[layer]
            if not torch.equal(rows, self._future[layer][start : start + rows.shape[0]]):
                raise ValueError(f"belady cache: layer {layer} left its future trace at token {start}")
        self._load[layer] += torch.bincount(rows.flatten(), minlength=self.num_experts)
        resident = self._resident[layer]
        hits = misses = 0
        for row in rows.tolist():
            needed = set(row)
            evicted: set[int] = set()
            for e in row:
                if e in resident:
                    hits += 1
                    resident[e] += 1
                    resident.move_to_end(e)
                    continue
                misses += 1
                if e in self._just_evicted[layer]:
                    self.repicks += 1
                if len(resident) >= self.capacity:
                    victim = self._victim(layer, needed)
                    del resident[victim]
                    evicted.add(victim)
                    self.evictions += 1
                resident[e] = 0
            self._just_evicted[layer] = evicted
            self._tokens[layer] += 1
        mask = self._mask[layer]
        mask.zero_()
        mask[list(resident)] = True
        self.hits += hits
        self.misses += misses
        return hits, misses

    def _victim(self, layer: int, needed: set[int]) -> int:
        resident = self._resident[layer]
        candidates = [e for e in resident if e not in needed] or list(resident)  # LRU first
        if self.policy == "lru+hysteresis":
            unproved = [e for e in candidates if resident[e] == 0]
            return (unproved or candidates)[0]
        if self.policy == "belady":
            next_use = self._next_use[layer][self._tokens[layer]]  # (E,), uses after this token
            return max(candidates, key=lambda e: int(next_use[e]))
        return candidates[0]

    def stats(self) -> CacheStats:
        """Counters and per-layer load since the cache was made."""
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            repicks=self.repicks,
            token_layers=sum(self._tokens),
            load=self._load.clone(),
        )


def _next_use(trace: torch.Tensor, num_experts: int) -> torch.Tensor:
    """``(T, E)``: for each token t, the first later token that needs each expert (``_NEVER`` if none)."""
    steps = trace.shape[0]
    used = torch.zeros(steps + 1, num_experts, dtype=torch.bool)
    used[torch.arange(steps).unsqueeze(-1), trace] = True
    at = torch.where(used, torch.arange(steps + 1).unsqueeze(-1), _NEVER)  # (T+1, E)
    first_from = at.flip(0).cummin(0).values.flip(0)  # first use at or after each token
    return first_from[1:]  # first use strictly after each token


def belady_hit_rate(trace: Sequence[torch.Tensor], capacity: int, num_experts: int | None = None) -> float:
    """Hit rate of the Belady oracle on a trace: per layer, the ``(T, k)`` experts each token needs.

    Args:
        trace: one ``(T, k)`` tensor per layer.
        capacity: resident experts per layer.
        num_experts: experts per layer (default: the largest id in the trace + 1).
    """
    tensors = [torch.as_tensor(t).long().cpu() for t in trace]
    experts = num_experts if num_experts is not None else max(int(t.max()) for t in tensors) + 1
    cache = ExpertCache(len(tensors), experts, capacity, "belady", future=tensors)
    for layer, t in enumerate(tensors):
        cache.access(layer, t)
    return cache.stats().hit_rate
