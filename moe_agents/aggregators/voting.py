"""``voting``: majority over normalised answers, ties broken by selection weight × confidence."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from ..answers import answer_key
from ..types import Answer
from .base import Aggregation, Aggregator

__all__ = ["VotingAggregator"]


class VotingAggregator(Aggregator):
    """Groups answers by their normalised key (the final answer when one is stated) and returns the
    best-scored answer of the group with the most votes. ``metadata["votes"]`` maps each key to
    the experts that gave it."""

    name = "voting"

    async def aggregate(self, job: Aggregation) -> Answer:
        groups: defaultdict[str, list[Answer]] = defaultdict(list)
        for answer in job.answers.values():
            groups[answer_key(answer.text)].append(answer)
        key, members = max(groups.items(), key=lambda kv: (len(kv[1]), sum(job.score(a) for a in kv[1])))
        best = max(members, key=job.score)
        votes = {k: [a.expert for a in v] for k, v in groups.items()}
        return replace(
            best,
            confidence=len(members) / len(job.answers),
            metadata={**best.metadata, "strategy": self.name, "winner": key, "votes": votes},
        )
