"""Conversation memory in a pipeline: context for each expert before it is asked, and the
exchange and its feedback remembered after."""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from ..continuity import continuation_of
from ..experts.base import Expert
from ..memory import MemoryStore, ProvidedContext
from ..routing.router import Router
from ..types import Query, Result
from .execution import RunState

__all__ = ["Conversation"]


class Conversation:
    """Gives experts a session's recent turns and memories, and remembers each exchange.

    For a query with a ``session_id``, each expert gets the recent turns that continue into the
    query (``moe_agents.continuity``) and the most relevant memories, within its
    ``context_tokens``; what was given, and why, goes to ``Result.metadata["context"]``. It is an
    observer of the pipeline: every exchange and its feedback are remembered.

    Args:
        memory: the store.
        router: its encoder embeds the query (a cache hit: routing embedded it already).
    """

    def __init__(self, memory: MemoryStore, router: Router) -> None:
        self.memory = memory
        self.router = router

    async def prepare(self, expert: Expert, query: Query, run: RunState) -> Query:
        """``query`` with the context ``expert`` gets (see the class docstring)."""
        memory, session, budget = self.memory, query.session_id, expert.context_tokens
        if session is None or budget <= 0:
            return query
        cfg, embed = memory.config, self.router.embed
        turns = await anyio.to_thread.run_sync(memory.recent, session)
        vector = await embed(query.text)
        decision = await continuation_of(
            turns, expert.name, vector, embed, threshold=cfg.similarity_threshold, same_expert=cfg.same_expert
        )
        given = turns[len(turns) - decision.turns :]
        key = ("memory", query.text, budget, decision.turns)  # experts given the same share one recall
        provided: ProvidedContext | None = run.shared.get(key)
        if provided is None:
            same = memory.encoder is not None and memory.encoder.name == self.router.encoder.name
            provided = run.shared[key] = await anyio.to_thread.run_sync(
                lambda: memory.context_for(
                    session, query.text, budget, turns=given, vector=vector if same else None
                )
            )
        run.context[expert.name] = {
            "tokens": provided.tokens,
            "turns": len(provided.turns),
            "memories": [m.id for m in provided.memories],
            "reason": decision.reason,
            "similarity": None if decision.similarity is None else round(decision.similarity, 3),
        }
        if not provided.text:
            return query
        extra = f"{provided.text}\n\n{query.context}" if query.context else provided.text
        return query.with_context(extra)

    async def on_result(self, query: Query, result: Result) -> None:
        """Remembers the exchange of a query that belongs to a session."""
        memory, session = self.memory, query.session_id
        if session is None:
            return
        votes = result.answer.metadata.get("votes")
        conflict = 1.0 if isinstance(votes, Mapping) and len(votes) > 1 else 0.0
        confidence = result.selection.weights[0] if result.selection.weights else 0.5
        await anyio.to_thread.run_sync(
            lambda: memory.add_exchange(
                session,
                query.text,
                result.answer.text,
                experts=list(result.answers),
                result_id=result.id,
                confidence=confidence,
                conflict=conflict,
            )
        )

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Nothing: a failed request has no answer to learn from."""

    async def on_feedback(self, result: Result, score: float) -> None:
        """Records the score with the remembered exchange."""
        memory = self.memory
        await anyio.to_thread.run_sync(lambda: memory.record_feedback(result.id, score))
