"""Routing and cache metrics: hit rate, churn, re-picks, load entropy, MaxVio, dead experts.

Load functions take expert loads (tokens routed to each expert) of shape ``(E,)`` or ``(L, E)``
and answer per layer (a float for ``(E,)``, a list for ``(L, E)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["CacheStats", "dead_experts", "hit_rate", "load_entropy", "max_vio"]


def hit_rate(hits: int, misses: int) -> float:
    """Share of expert accesses served from the cache (0 when there were none)."""
    total = hits + misses
    return hits / total if total else 0.0


def _per_layer(load: torch.Tensor) -> torch.Tensor:
    load = torch.as_tensor(load, dtype=torch.float64)
    return load.unsqueeze(0) if load.dim() == 1 else load  # (L, E)


def load_entropy(load: torch.Tensor) -> float | list[float]:
    """Entropy of the load distribution over experts divided by ``log E`` (1 = perfectly even).

    A layer with no load, or a single expert, scores 0.
    """
    rows = _per_layer(load)
    num_experts = rows.shape[-1]
    total = rows.sum(-1, keepdim=True)  # (L, 1)
    p = rows / total.clamp_min(1e-300)
    h = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # (L,)
    out = torch.where(total.squeeze(-1) > 0, h / math.log(num_experts), 0.0) if num_experts > 1 else h * 0
    return out.tolist() if torch.as_tensor(load).dim() == 2 else float(out[0])


def max_vio(load: torch.Tensor) -> float | list[float]:
    """MaxVio: the heaviest expert's load over the mean load, minus 1 (0 = perfectly even or no load)."""
    rows = _per_layer(load)
    mean = rows.mean(-1)
    out = torch.where(mean > 0, rows.max(-1).values / mean.clamp_min(1e-300) - 1.0, 0.0)
    return out.tolist() if torch.as_tensor(load).dim() == 2 else float(out[0])


def dead_experts(load: torch.Tensor) -> int | list[int]:
    """Experts that received no token."""
    rows = _per_layer(load)
    out = (rows == 0).sum(-1)
    return [int(x) for x in out] if torch.as_tensor(load).dim() == 2 else int(out[0])


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What an expert cache saw, overall (counts summed over layers; load kept per layer).

    Attributes:
        hits: expert accesses served by a resident expert.
        misses: expert accesses that had to load the expert.
        evictions: experts dropped to make room.
        repicks: misses on an expert evicted at the layer's previous token (thrashing).
        token_layers: tokens seen, summed over layers.
        load: ``(L, E)`` tokens routed to each expert per layer.
    """

    hits: int
    misses: int
    evictions: int
    repicks: int
    token_layers: int
    load: torch.Tensor

    @property
    def hit_rate(self) -> float:
        """Share of accesses that hit."""
        return hit_rate(self.hits, self.misses)

    @property
    def churn(self) -> float:
        """Evictions per token-layer."""
        return self.evictions / self.token_layers if self.token_layers else 0.0

    @property
    def load_entropy(self) -> float:
        """Mean over layers of the normalised load entropy."""
        values = load_entropy(self.load)
        assert isinstance(values, list)
        return sum(values) / len(values)

    @property
    def max_vio(self) -> float:
        """Mean over layers of MaxVio."""
        values = max_vio(self.load)
        assert isinstance(values, list)
        return sum(values) / len(values)

    @property
    def dead_experts(self) -> int:
        """Dead experts summed over layers."""
        values = dead_experts(self.load)
        assert isinstance(values, list)
        return sum(values)
