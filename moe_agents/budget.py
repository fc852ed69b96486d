"""Per-session cost budgets: once a session has spent its budget, only cheap experts answer it."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated

from .bounds import Ge, check_bounds
from .types import Usage

__all__ = ["BudgetConfig", "SessionBudgets"]


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    """The YAML ``trust.budget`` section.

    Attributes:
        usd: most money one session may spend on model calls (``None``: no limit).
        tokens: most tokens one session may use (``None``: no limit).
        cheap_price: experts whose ``price`` is at most this still answer an exhausted session.
        max_sessions: sessions remembered (least recently used forgotten first).
    """

    usd: Annotated[float, Ge(0.0)] | None = None
    tokens: Annotated[int, Ge(0)] | None = None
    cheap_price: Annotated[float, Ge(0.0)] = 0.0
    max_sessions: Annotated[int, Ge(1)] = 10_000

    def __post_init__(self) -> None:
        check_bounds("trust.budget", self)

    @property
    def enabled(self) -> bool:
        return self.usd is not None or self.tokens is not None


class SessionBudgets:
    """What each session (``Query.session_id``; ``None`` is one shared session) has spent."""

    def __init__(self, config: BudgetConfig) -> None:
        self.config = config
        self._spent: OrderedDict[str | None, Usage] = OrderedDict()

    def spent(self, session: str | None) -> Usage:
        return self._spent.get(session, Usage())

    def exhausted(self, session: str | None) -> bool:
        """Whether ``session`` has used up its money or token budget."""
        cfg, used = self.config, self.spent(session)
        return (cfg.usd is not None and used.cost_usd >= cfg.usd) or (
            cfg.tokens is not None and used.total_tokens >= cfg.tokens
        )

    def charge(self, session: str | None, usage: Usage) -> None:
        """Adds one run's usage to ``session``."""
        self._spent[session] = self.spent(session) + usage
        self._spent.move_to_end(session)
        while len(self._spent) > self.config.max_sessions:
            self._spent.popitem(last=False)
