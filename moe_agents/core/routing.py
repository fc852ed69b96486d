"""Routing within a pipeline: the router chooses among the roster's active experts, within the
session's budget, and waits out cooling-down backends."""

from __future__ import annotations

import time
from dataclasses import replace

import anyio

from ..budget import SessionBudgets
from ..errors import BackendUnavailable, BudgetExhausted, NoCapableExpert
from ..logging import get_logger
from ..routing.permission import Preset
from ..routing.router import Router
from ..types import ExpertScore, Query, Selection
from .roster import Roster

__all__ = ["choose"]

log = get_logger(__name__)


async def choose(
    router: Router,
    roster: Roster,
    budgets: SessionBudgets,
    query: Query,
    preset: Preset | str,
    expert: str | None = None,
) -> Selection:
    """The router's selection among the experts routing may choose now; an exhausted session
    gets only experts whose ``price`` is at most the budget's ``cheap_price``. Experts kept out
    of routing are listed in ``Selection.scores`` with why. When every capable expert is cooling
    down, it waits for the first to recover, unless that comes after the request's deadline: then
    it raises ``BackendUnavailable`` at once rather than hold a slot it cannot use.

    With ``expert``, that expert alone is chosen (mode ``forced``; execution does not fall back
    from it), whatever the router ranks first; the router still scores every candidate and gives
    the trust context, so the choice is explained and feedback on it counts.

    Raises:
        NoCapableExpert: no active expert accepts the query's attachments, or the forced
            ``expert`` is not registered, is out of routing, or cannot take them.
        BudgetExhausted: the session has spent its budget and no expert is cheap enough.
        BackendUnavailable: every capable expert is cooling down past the request's deadline.
    """
    session = query.session_id
    allowed = None
    if budgets.config.enabled and budgets.exhausted(session):
        cheap = budgets.config.cheap_price
        allowed = lambda e: e.price <= cheap  # noqa: E731
        log.info("pipeline.budget_exhausted", session=session, spent=budgets.spent(session).to_dict())
    while True:
        excluded = roster.excluded()  # once per attempt: the same view for routing and the notes
        active = [e for name, e in roster.experts.items() if name not in excluded]
        if allowed is not None and not any(allowed(e) for e in active if expert in (None, e.name)):
            spent = budgets.spent(session)
            raise BudgetExhausted(
                f"session {session!r} has spent its budget ({spent.cost_usd:.4g} USD, "
                f"{spent.total_tokens} tokens) and no expert costs at most {budgets.config.cheap_price}",
                session=session,
            )
        try:
            selection = await router.route(query, active, preset=preset, allowed=allowed)
        except BackendUnavailable as exc:
            wait = exc.recovers_at - time.monotonic()
            if wait > anyio.current_effective_deadline() - anyio.current_time():
                raise  # recovery comes after the request's deadline: fail now, free the slot
            log.info("pipeline.waiting_for_recovery", s=round(wait, 3))
            await anyio.sleep(max(wait, 0.0) + 0.001)
            continue
        if expert is not None:
            selection = _forced(selection, expert, excluded)
        if not excluded:
            return selection
        notes = {n: ExpertScore(note=why) for n, why in excluded.items()}
        return replace(selection, scores={**selection.scores, **notes})


def _forced(selection: Selection, expert: str, excluded: dict[str, str]) -> Selection:
    """``selection`` with ``expert`` alone chosen, or ``NoCapableExpert`` saying why it cannot be."""
    if expert in excluded:
        raise NoCapableExpert(f"expert {expert!r} is out of routing now: {excluded[expert]}", expert=expert)
    score = selection.scores.get(expert)
    if score is None:
        raise NoCapableExpert(f"no expert named {expert!r}; experts: {sorted(selection.scores)}")
    if score.expertise is None:  # the router's mark of an expert that cannot take the query
        raise NoCapableExpert(f"expert {expert!r} cannot take this query: {score.note}", expert=expert)
    return replace(selection, experts=(expert,), weights=(1.0,), mode="forced")
