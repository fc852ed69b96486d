"""The aggregator interface: merge the selected experts' answers into one."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..backends.base import ChunkCallback
from ..types import Answer, Query, Selection

__all__ = ["Aggregation", "Aggregator", "AskExpert", "quote_as_data"]

AskExpert = Callable[[str, Query, "ChunkCallback | None"], Awaitable[Answer]]
"""Calls one expert by name through the pipeline (deadline, capacity, stats, error recording).
Raises ``RunError`` when the expert fails."""


@dataclass(frozen=True, slots=True)
class Aggregation:
    """What an aggregator gets to work with.

    Attributes:
        query: the user's query.
        selection: the router's choice, best first.
        answers: the answers obtained so far, in selection order (at least one).
        ask: calls another expert through the pipeline.
        on_chunk: where to stream the final text, if the strategy generates it; strategies that
            do not generate text leave it unused and the pipeline sends the merged text once.
        failed: experts that already failed on this query (not worth asking again).
    """

    query: Query
    selection: Selection
    answers: Mapping[str, Answer]
    ask: AskExpert
    on_chunk: ChunkCallback | None = None
    failed: frozenset[str] = frozenset()

    def score(self, answer: Answer) -> float:
        """Selection weight × the answer's confidence."""
        return self.selection.weight(answer.expert) * answer.confidence


class Aggregator(ABC):
    """Merges answers. Subclasses validate their options once in ``__init__``.

    Attributes:
        name: the strategy name used in YAML.
        fan_out: when ``False`` the pipeline asks the selected experts one at a time, best first,
            until one answers, and leaves the rest to the aggregator (``sequential`` chains them).
    """

    name: ClassVar[str]
    fan_out: ClassVar[bool] = True

    @property
    def referenced_experts(self) -> Mapping[str, str]:
        """The experts this aggregator calls by name, by the option that names each
        (``{"synthesis_expert": "writer"}``): the pipeline checks they exist and keeps them from
        being removed. None by default."""
        return {}

    @abstractmethod
    async def aggregate(self, job: Aggregation) -> Answer:
        """Returns the merged answer; raises ``RunError`` only if no answer can be produced."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def quote_as_data(text: str, *, label: str) -> str:
    """Wraps ``text`` between delimiters that carry a fresh random tag, so that the quoted text
    (model output, which may contain instructions) cannot close the quote."""
    tag = secrets.token_hex(6)
    while tag in text:  # pragma: no cover - 48 random bits
        tag = secrets.token_hex(6)
    return f"<<<{label} {tag}\n{text}\n{tag} END>>>"
