"""Whether a new query continues the conversation, and so which recent turns an expert is given.

Recent turns help a follow-up ("and in Rust?") and hurt a new question: a small model given the
previous turn's code for "What is 17 times 23?" copies it. So an expert gets the recent turns only
while they continue into the new query. Walking back from the newest exchange of the recent buffer,
an exchange is kept when

* the expert being asked answered it (routing momentum keeps a conversation's follow-ups with its
  expert, and terse follow-ups such as "why?" carry no other signal), or
* its user turn's cosine similarity to the new query, both embedded by the router's encoder, is at
  least ``threshold``;

the walk stops at the first exchange that does neither, so the expert gets the unbroken run of
turns since the topic began (none after a topic switch). Long-term memories follow their own rule
in ``MemoryStore.recall``: relevance only (the same similarity floor), whoever answered them.

``THRESHOLD`` was fitted by ``benchmarks/context_rule.py`` on the 60 turn pairs of the
hand-written conversations in ``moe_agents.evaluation.conversations`` (no fit split of a public
data set has conversations), routed by the offline default pipeline, maximising balanced accuracy
(follow-ups given their turn, topic switches not); it is measured on the real two-turn
conversations of MT-Bench, a test split never fitted on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .memory import Turn

__all__ = ["THRESHOLD", "Continuation", "continuation", "continuation_of"]

THRESHOLD = 0.115
"""The default similarity above which a recent exchange continues into a new query (the YAML
``memory.similarity_threshold``): fitted, see the module docstring."""

Reason = Literal["always", "same expert", "similar", "new topic", "no earlier turns"]


@dataclass(frozen=True, slots=True)
class Continuation:
    """Which recent turns continue into a new query, for one expert.

    Attributes:
        turns: how many of the newest recent turns continue (0: none is given).
        reason: why the newest exchange continues or not: ``same expert``, ``similar``,
            ``new topic``, ``no earlier turns``, or ``always`` (the rule is off).
        similarity: cosine similarity of the new query to the newest user turn (``None`` when there
            is none, or the rule is off).
    """

    turns: int
    reason: Reason
    similarity: float | None


def continuation(
    turns: Sequence[Turn],
    expert: str,
    similarities: Sequence[float | None],
    *,
    threshold: float = THRESHOLD,
    same_expert: bool = True,
) -> Continuation:
    """How many of the newest ``turns`` continue into the new query, for ``expert``.

    Args:
        turns: the session's recent turns, oldest first.
        expert: the expert about to answer.
        similarities: for each turn, its cosine similarity to the new query (only user turns' are
            read; ``None`` for the others).
        threshold: least similarity of a continuing exchange's user turn; ``-1`` or less keeps
            every turn (the behaviour before this rule).
        same_expert: whether an exchange that ``expert`` answered continues whatever its similarity.
    """
    if len(similarities) != len(turns):
        raise ValueError(f"{len(turns)} turns but {len(similarities)} similarities")
    if threshold <= -1.0:
        return Continuation(len(turns), "always", None)
    reason: Reason = "new topic" if turns else "no earlier turns"
    kept, newest = 0, None
    end = len(turns)
    while end > 0:
        start = end - 1
        while start > 0 and turns[start].role != "user":  # an exchange: its user turn, then answers
            start -= 1
        head = turns[start]
        sim = similarities[start] if head.role == "user" else None
        if end == len(turns):
            newest = sim
        by_expert = same_expert and expert in head.experts
        if not (by_expert or (sim is not None and sim >= threshold)):
            break
        if kept == 0:
            reason = "same expert" if by_expert else "similar"
        kept, end = len(turns) - start, start
    return Continuation(kept, reason, newest)


async def continuation_of(
    turns: Sequence[Turn],
    expert: str,
    vector: np.ndarray,
    embed: Callable[[str], Awaitable[np.ndarray]],
    *,
    threshold: float = THRESHOLD,
    same_expert: bool = True,
) -> Continuation:
    """``continuation`` with the similarities computed from embeddings.

    Args:
        turns: the session's recent turns, oldest first.
        expert: the expert about to answer.
        vector: the new query's embedding (L2-normalised, e.g. the router's, already computed for
            routing).
        embed: embeds a text the same way (e.g. ``Router.embed``, whose cache usually holds the
            earlier user turns already).
        threshold: see ``continuation``.
        same_expert: see ``continuation``.
    """
    if threshold <= -1.0:
        return continuation(turns, expert, [None] * len(turns), threshold=threshold)
    similarities: list[float | None] = [
        float(np.dot(vector, await embed(t.text))) if t.role == "user" else None for t in turns
    ]
    return continuation(turns, expert, similarities, threshold=threshold, same_expert=same_expert)
