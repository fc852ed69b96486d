"""``ExpertPolicy``: what a pipeline enforces for one expert, as one value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from ..bounds import Ge, Gt, check_bounds
from ..types import Answer, Query

__all__ = ["ExpertPolicy", "Scorer"]

Scorer = Callable[[Query, Answer], "float | None"]
"""An automatic quality check of one answer: a score in [0, 1], or ``None`` for no opinion."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpertPolicy:
    """How a pipeline treats one expert: its capacity, deadline, price, automatic scorer and memory
    context.

    An expert is built with one (``CodingExpert(backends=[...], policy=ExpertPolicy(max_load=2))``);
    a running pipeline changes it with ``Pipeline.set_policy``, which takes effect for the next
    request.

    Attributes:
        max_load: most concurrent calls the pipeline lets through (times the expert's instances
            when the manager scales it).
        timeout_s: per-call deadline in seconds (``None``: none).
        price: what one call costs, in the unit of the pipeline's budgets (e.g. USD); the router
            turns it into ``cheapness``.
        scorer: an automatic quality check ``(query, answer) -> score in [0, 1] | None`` whose
            scores update trust like feedback does (``None``: no score for that answer).
        context_tokens: with conversation memory, the most tokens of earlier turns and memories
            put before the request.

    Raises:
        ConfigError: a value is out of range.
    """

    max_load: Annotated[int, Ge(1)] = 4
    timeout_s: Annotated[float, Gt(0.0)] | None = 120.0
    price: Annotated[float, Ge(0.0)] = 0.0
    scorer: Scorer | None = None
    context_tokens: Annotated[int, Ge(0)] = 512

    def __post_init__(self) -> None:
        check_bounds("expert policy", self)
        object.__setattr__(self, "price", float(self.price))
