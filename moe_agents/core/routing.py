"""Routing within a pipeline: the router chooses among the roster's active experts, within the
session's budget, and waits out cooling-down backends."""

from __future__ import annotations

import time
from dataclasses import replace

import anyio

from ..budget import SessionBudgets
from ..errors import BackendUnavailable
from ..logging import get_logger
from ..routing.permission import Preset
from ..routing.router import Router
from ..types import ExpertScore, Query, Selection
from .roster import Roster

__all__ = ["choose"]

log = get_logger(__name__)


async def choose(
    router: Router, roster: Roster, budgets: SessionBudgets, query: Query, preset: Preset | str
) -> Selection:
    """The router's selection among the experts routing may choose now; an exhausted session
    gets only experts whose ``price`` is at most the budget's ``cheap_price``. Experts kept out
    of routing are listed in ``Selection.scores`` with why. When every capable expert is cooling
    down, it waits for the first to recover (the request's deadline bounds the wait).

    Raises:
        NoCapableExpert: no active expert accepts the query's attachments.
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
        try:
            selection = await router.route(query, active, preset=preset, allowed=allowed)
        except BackendUnavailable as exc:
            wait = exc.recovers_at - time.monotonic()
            log.info("pipeline.waiting_for_recovery", s=round(wait, 3))
            await anyio.sleep(max(wait, 0.0) + 0.001)  # past the deadline, the deadline fires
            continue
        if not excluded:
            return selection
        notes = {n: ExpertScore(note=why) for n, why in excluded.items()}
        return replace(selection, scores={**selection.scores, **notes})
