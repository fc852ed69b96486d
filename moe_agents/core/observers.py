"""Observers: what a pipeline tells the parts that learn from its results.

After every answered request the pipeline calls each observer's ``on_result``, after every
failed one its ``on_failure``, and for every ``feedback`` its ``on_feedback``, in the order they
were given. Conversation memory
(``Conversation``), trust and automatic scorers (``TrustRecorder``), expert statistics
(``StatsRecorder``), session budgets (``BudgetRecorder``) and A/B tests (``Manager``) are observers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import anyio

from ..budget import SessionBudgets
from ..errors import InvalidInput, check_unit
from ..experts.base import Expert
from ..logging import get_logger
from ..routing.trust import TrustStore
from ..types import Query, Result

__all__ = ["BudgetRecorder", "Observer", "StatsRecorder", "TrustRecorder"]

log = get_logger(__name__)


class Observer(Protocol):
    """Learns from a pipeline's results and the feedback on them."""

    async def on_result(self, query: Query, result: Result) -> None:
        """Called once per answered request, before ``run`` returns."""
        ...

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Called once per request that raised ``error`` (invalid input included), ``seconds``
        after it started."""
        ...

    async def on_feedback(self, result: Result, score: float) -> None:
        """Called once per ``feedback``, with a score in [0, 1]."""
        ...


class StatsRecorder:
    """Folds feedback into the running statistics of the result's experts that are still registered.

    Args:
        experts: the registered experts now.
    """

    def __init__(self, experts: Callable[[], Mapping[str, Expert]]) -> None:
        self.experts = experts

    async def on_result(self, query: Query, result: Result) -> None:
        """Nothing: the pipeline counts calls as they happen."""

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Nothing: a failed request has no answer to learn from."""

    async def on_feedback(self, result: Result, score: float) -> None:
        experts = self.experts()
        for name in result.answers:
            if (expert := experts.get(name)) is not None:  # it may have been removed since
                expert.stats.record_feedback(score)


class BudgetRecorder:
    """Charges each request's usage to its session's budget."""

    def __init__(self, budgets: SessionBudgets) -> None:
        self.budgets = budgets

    async def on_result(self, query: Query, result: Result) -> None:
        self.budgets.charge(query.session_id, result.cost)

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Nothing: a failed request has no answer to learn from."""

    async def on_feedback(self, result: Result, score: float) -> None:
        """Nothing: budgets count money, not quality."""


class TrustRecorder:
    """Turns quality scores into trust, in the result's context: feedback, and the automatic
    ``scorer`` of each expert that answered.

    Args:
        trust: the trust store now (``None``: scores are logged only).
        experts: the registered experts now.
    """

    def __init__(
        self, trust: Callable[[], TrustStore | None], experts: Callable[[], Mapping[str, Expert]]
    ) -> None:
        self.trust = trust
        self.experts = experts

    async def on_result(self, query: Query, result: Result) -> None:
        """Runs each answering expert's ``scorer`` and records its score as trust."""
        experts = self.experts()
        for name, answer in result.answers.items():
            expert = experts.get(name)
            scorer = expert.scorer if expert is not None else None
            if scorer is None:
                continue
            try:
                score = await anyio.to_thread.run_sync(scorer, query, answer)
            except Exception as exc:  # a broken scorer must not break answering
                log.warning("scorer.failed", expert=name, error=f"{type(exc).__name__}: {exc}")
                continue
            if score is None:
                continue
            try:
                value = check_unit(score, "score")
            except InvalidInput:
                log.warning("scorer.invalid", expert=name, score=repr(score))
                continue
            log.info("scorer.scored", expert=name, score=value, result_id=result.id)
            await self._record([name], result, value, source="scorer")

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Nothing: a failed request has no answer to learn from."""

    async def on_feedback(self, result: Result, score: float) -> None:
        await self._record(list(result.answers), result, score, source="feedback")

    async def _record(self, experts: Sequence[str], result: Result, score: float, *, source: str) -> None:
        store, context = self.trust(), result.selection.context
        if store is None or context is None or not experts:
            return

        def write() -> None:
            for name in experts:
                store.record(name, context, score, source=source, result_id=result.id)

        await anyio.to_thread.run_sync(write)
