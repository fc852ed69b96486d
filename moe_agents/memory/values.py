"""Conversation memory's values: its configuration, turns, memories, the context given to an expert,
and the token estimate that budgets it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from ..bounds import Ge, Interval, check_bounds
from ..continuity import THRESHOLD

__all__ = [
    "CACHED_SESSIONS",
    "TOKENS_PER_WORD",
    "Memory",
    "MemoryConfig",
    "ProvidedContext",
    "Turn",
    "count_tokens",
]

CACHED_SESSIONS = 1024
"""How many sessions' recent buffers stay in memory (least recently used ones are dropped and
rebuilt from the database when needed again)."""

TOKENS_PER_WORD = 1.3
"""``count_tokens``' estimate of subword tokens per whitespace-separated word."""


def count_tokens(text: str) -> int:
    """Estimates the tokens of ``text``: ``ceil(words * 1.3)``, words split on whitespace.

    A rough, tokenizer-free estimate (English averages about 1.3 subword tokens a word); pass
    another counter to ``MemoryStore.context_for`` to count with a real tokenizer.
    """
    return math.ceil(len(text.split()) * TOKENS_PER_WORD)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """Settings of a ``MemoryStore``.

    Attributes:
        path: the SQLite file; ``":memory:"`` for a store that lives as long as its object; ``None``
            for ``MemoryStore.default_path()``.
        recent_turns: how many turns (user and assistant each count one) the recent buffer holds.
        recall_k: how many memories ``recall`` returns by default.
        weights: the salience weights of novelty, surprise, reward and conflict (non-negative, not
            all zero; they are normalised to sum to 1).
        similarity_threshold: in [-1, 1]. A pipeline gives an expert the recent turns only while
            they continue into the new query: an exchange continues when its user turn is at
            least this similar to the query (or, with ``same_expert``, when the expert answered
            it); see ``moe_agents.continuity``. ``recall`` leaves out memories less similar than
            this. ``-1`` turns both off (every recent turn, every positively similar memory).
        same_expert: an exchange the asked expert answered continues whatever its similarity.
    """

    path: str | Path | None = None
    recent_turns: Annotated[int, Ge(0)] = 8
    recall_k: Annotated[int, Ge(0)] = 3
    weights: tuple[float, float, float, float] = (0.3, 0.2, 0.3, 0.2)
    similarity_threshold: Annotated[float, Interval(ge=-1.0, le=1.0)] = THRESHOLD
    same_expert: bool = True

    def __post_init__(self) -> None:
        weights = tuple(self.weights)
        object.__setattr__(self, "weights", weights)
        finite = len(weights) == 4 and all(
            isinstance(w, int | float) and math.isfinite(w) and w >= 0 for w in weights
        )
        check_bounds(
            "memory",
            self,
            {
                "recent_turns": isinstance(self.recent_turns, int),
                "recall_k": isinstance(self.recall_k, int),
                "weights": finite and sum(weights) > 0,
                "similarity_threshold": isinstance(self.similarity_threshold, int | float),
                "same_expert": isinstance(self.same_expert, bool),
            },
        )


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation, as logged.

    Attributes:
        id: the turn's row id (increasing in the order turns were written).
        role: ``user`` or ``assistant``.
        text: the message, verbatim.
        experts: the experts that answered the exchange.
        result_id: the pipeline result of the exchange, when there is one.
        ts: when it was written (unix seconds).
    """

    id: int
    role: str
    text: str
    experts: tuple[str, ...]
    result_id: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class Memory:
    """One remembered exchange, as ``recall`` found it.

    Attributes:
        id: the memory's row id.
        session: the session it belongs to.
        text: the exchange (``user: ...`` and ``assistant: ...`` lines).
        ts: when it was written (unix seconds).
        similarity: cosine similarity of its embedding to the recall text.
        salience: the weighted mean of the four components below, in [0, 1].
        score: the ranking value, ``similarity * (0.5 + 0.5 * salience)``.
        novelty: 1 - max cosine similarity to the session's earlier memories.
        surprise: 1 - the router's confidence for the exchange.
        reward: the feedback score, ``None`` until feedback arrives (counted as 0.5).
        conflict: how much the answering experts disagreed.
    """

    id: int
    session: str
    text: str
    ts: float
    similarity: float
    salience: float
    score: float
    novelty: float
    surprise: float
    reward: float | None
    conflict: float


@dataclass(frozen=True, slots=True)
class ProvidedContext:
    """What ``context_for`` gave an expert.

    Attributes:
        text: the formatted context (empty when nothing fitted).
        turns: the recent turns in it, oldest first.
        memories: the memories in it, best first.
        tokens: the token count of ``text``.
    """

    text: str
    turns: tuple[Turn, ...]
    memories: tuple[Memory, ...]
    tokens: int
