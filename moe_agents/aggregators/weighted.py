"""``weighted``: keep the answer with the highest selection weight × confidence."""

from __future__ import annotations

from dataclasses import replace

from ..types import Answer
from .base import Aggregation, Aggregator

__all__ = ["WeightedAggregator"]


class WeightedAggregator(Aggregator):
    """Picks the best-scored answer; ``metadata["alternatives"]`` lists the others."""

    name = "weighted"

    async def aggregate(self, job: Aggregation) -> Answer:
        ranked = sorted(job.answers.values(), key=job.score, reverse=True)
        best = ranked[0]
        alternatives = [
            {"expert": a.expert, "score": round(job.score(a), 4), "preview": a.text[:100]} for a in ranked[1:]
        ]
        return replace(
            best,
            metadata={
                **best.metadata,
                "strategy": self.name,
                "score": job.score(best),
                "alternatives": alternatives,
            },
        )
