"""``voting``: majority over normalised answers, ties broken by selection weight × confidence."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Literal

from ..answers import answer_key, extract_number
from ..errors import ConfigError
from ..types import Answer
from .base import Aggregation, Aggregator

__all__ = ["VotingAggregator"]


class VotingAggregator(Aggregator):
    """Groups answers by their normalised key and returns the best-scored answer of the group with
    the most votes. ``metadata["votes"]`` maps each key to the experts that gave it.

    Args:
        key: what a vote counts: ``answer`` (the stated final answer when there is one, else the
            whole reply, normalised) or ``number`` (the numeric answer: the stated one, else the
            last number in the reply, as GSM8K is usually graded).
        weighted: each vote counts its selection weight × confidence (trust-weighted voting when
            the router ranks by trust) instead of 1.
    """

    name = "voting"

    def __init__(self, *, key: Literal["answer", "number"] = "answer", weighted: bool = False) -> None:
        if key not in ("answer", "number"):
            raise ConfigError(f"voting key must be 'answer' or 'number', got {key!r}")
        self.key = key
        self.weighted = weighted

    def _key(self, answer: Answer) -> str:
        if self.key == "number" and (number := extract_number(answer.text)) is not None:
            return number
        return answer_key(answer.text)

    async def aggregate(self, job: Aggregation) -> Answer:
        groups: defaultdict[str, list[Answer]] = defaultdict(list)
        for answer in job.answers.values():
            groups[self._key(answer)].append(answer)

        def strength(members: list[Answer]) -> tuple[float, float]:
            weight = sum(job.score(a) for a in members)
            return (weight, len(members)) if self.weighted else (len(members), weight)

        key, members = max(groups.items(), key=lambda kv: strength(kv[1]))
        best = max(members, key=job.score)
        votes = {k: [a.expert for a in v] for k, v in groups.items()}
        total = sum(job.score(a) for a in job.answers.values()) if self.weighted else len(job.answers)
        share = (
            (sum(job.score(a) for a in members) if self.weighted else len(members)) / total if total else 0.0
        )
        return replace(
            best,
            confidence=share,
            metadata={**best.metadata, "strategy": self.name, "winner": key, "votes": votes},
        )

    def __repr__(self) -> str:
        return f"VotingAggregator(key={self.key!r}, weighted={self.weighted})"
