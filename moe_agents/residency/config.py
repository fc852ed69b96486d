"""A ``Residency``'s settings: the byte budget, the residency bonus, and the costs of loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ..bounds import Ge, Gt, check_bounds

__all__ = ["GB", "ResidencyConfig"]

GB = 1_000_000_000
"""One gigabyte (10⁹ bytes): ``ResidencyConfig(budget_bytes=16 * GB)``."""


@dataclass(frozen=True, slots=True)
class ResidencyConfig:
    """Budget and costs of a ``Residency``.

    Attributes:
        budget_bytes: most bytes of models resident at once.
        hysteresis: the persistence bonus of a resident model (the seed: +20 %).
        bandwidth_bytes_per_s: the load bandwidth assumed until a real load is measured.
        swap_cost_weight: cost per second of loading in ``permission`` (1: the seed's formula, cost =
            seconds). A load serves the queries that follow it, so ``1 / (queries per load)``
            amortises it; the residency benchmark sweeps this.
        swap_budget_s: most seconds of loading per window; ``None``: no limit.
        swap_window_s: the sliding window the swap budget applies to, in seconds.
        wait_s: how long ``use`` waits for a pinned model to be released before it gives up;
            ``None`` waits for ever.
    """

    budget_bytes: Annotated[int, Gt(0)]
    hysteresis: Annotated[float, Ge(0.0)] = 0.2
    bandwidth_bytes_per_s: Annotated[float, Gt(0.0)] = 1e9
    swap_cost_weight: Annotated[float, Ge(0.0)] = 1.0
    swap_budget_s: Annotated[float, Ge(0.0)] | None = None
    swap_window_s: Annotated[float, Gt(0.0)] = 60.0
    wait_s: Annotated[float, Gt(0.0)] | None = 60.0

    def __post_init__(self) -> None:
        check_bounds("residency", self)
