"""Expert evaluation: one score per expert from its running statistics, best first.

Each expert gets four component scores in [0, 1]:

- ``success_rate``: finished calls that succeeded (``ExpertStats.success_rate``);
- ``headroom``: ``1 - current_load / max_load``, the spare capacity right now;
- ``latency_score``: ``1 / (1 + latency_ema_ms / reference_ms)``, 1.0 before the first call;
- ``trust``: given by the caller (a trust store, feedback means), when there is one.

The score is their weighted mean; an expert without trust is scored over the other three weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from ..bounds import Ge, check_bounds
from ..errors import ConfigError, check_unit
from ..experts.base import Expert

__all__ = ["ExpertRank", "RankingWeights", "rank_experts"]


@dataclass(frozen=True, slots=True)
class RankingWeights:
    """How much each component counts in an expert's score.

    Attributes:
        success: weight of the success rate.
        headroom: weight of the spare capacity.
        latency: weight of the latency score.
        trust: weight of the trust, for experts that have one.
    """

    success: Annotated[float, Ge(0.0)] = 0.5
    headroom: Annotated[float, Ge(0.0)] = 0.3
    latency: Annotated[float, Ge(0.0)] = 0.2
    trust: Annotated[float, Ge(0.0)] = 0.5

    def __post_init__(self) -> None:
        names = ("success", "headroom", "latency", "trust")
        check_bounds("ranking", self, {k: math.isfinite(getattr(self, k)) for k in names})
        if sum(getattr(self, k) for k in names) <= 0.0:
            raise ConfigError(f"invalid ranking settings: the weights must not all be 0: {self}")


@dataclass(frozen=True, slots=True)
class ExpertRank:
    """One expert's score and what it was made of.

    Attributes:
        name: the expert's name.
        score: the weighted mean of the components, in [0, 1].
        success_rate: fraction of finished calls that succeeded.
        headroom: ``1 - current_load / max_load``, clipped to [0, 1].
        latency_score: ``1 / (1 + latency_ema_ms / reference_ms)`` (1.0 when no call finished yet).
        trust: the trust given for this expert (``None``: none, and its weight did not count).
        calls: calls made to the expert so far.
    """

    name: str
    score: float
    success_rate: float
    headroom: float
    latency_score: float
    trust: float | None
    calls: int


def rank_experts(
    experts: Sequence[Expert],
    weights: RankingWeights = RankingWeights(),
    *,
    trust: Mapping[str, float] | None = None,
    reference_ms: float = 1000.0,
) -> list[ExpertRank]:
    """Scores every expert from its running statistics, best first (ties by name).

    Args:
        experts: the experts to rank.
        weights: the components' weights.
        trust: trust in [0, 1] by expert name; experts not in it are scored without trust.
        reference_ms: the latency that scores 0.5.

    Raises:
        InvalidInput: a trust value is outside [0, 1].
        ConfigError: ``reference_ms`` is not positive.
    """
    if not reference_ms > 0.0:
        raise ConfigError(f"reference_ms must be > 0, got {reference_ms}")
    trust = trust or {}
    ranks = []
    for expert in experts:
        stats = expert.stats
        headroom = min(max(1.0 - stats.current_load / expert.max_load, 0.0), 1.0)
        ema = stats.latency_ema_ms
        latency = 1.0 if ema is None else 1.0 / (1.0 + max(ema, 0.0) / reference_ms)
        t = trust.get(expert.name)
        if t is not None:
            check_unit(t, f"trust of {expert.name!r}")
        total = weights.success * stats.success_rate + weights.headroom * headroom + weights.latency * latency
        used = weights.success + weights.headroom + weights.latency
        if t is not None:
            total += weights.trust * t
            used += weights.trust
        ranks.append(
            ExpertRank(
                name=expert.name,
                score=total / used if used > 0.0 else 0.0,
                success_rate=stats.success_rate,
                headroom=headroom,
                latency_score=latency,
                trust=None if t is None else float(t),
                calls=stats.total_queries,
            )
        )
    ranks.sort(key=lambda r: (-r.score, r.name))
    return ranks
