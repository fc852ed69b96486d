"""A ``Residency``'s counters: selections, hits, swaps, evictions, bytes and seconds loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ResidencyMetrics"]


@dataclass(slots=True)
class ResidencyMetrics:
    """Counters of a ``Residency``.

    Attributes:
        selections: ``use`` calls.
        hits: ``use`` calls that found the model resident.
        misses: ``use`` calls that did not (``swaps`` can be lower: a concurrent call may have
            loaded it meanwhile).
        swaps: loads performed.
        evictions: models unloaded to make room.
        bytes_loaded: bytes of every load.
        load_s: seconds spent loading (simulated: ``bytes / bandwidth``).
        compared: ``note_selection`` calls.
        quality_costs: of those, the ones where the chosen model was not the most trusted.
    """

    selections: int = 0
    hits: int = 0
    misses: int = 0
    swaps: int = 0
    evictions: int = 0
    bytes_loaded: int = 0
    load_s: float = 0.0
    compared: int = 0
    quality_costs: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of ``use`` calls that found the model resident (0 before any)."""
        return self.hits / self.selections if self.selections else 0.0

    @property
    def swaps_per_selection(self) -> float:
        """Loads per ``use`` call (0 before any)."""
        return self.swaps / self.selections if self.selections else 0.0

    @property
    def quality_cost_rate(self) -> float:
        """Share of noted selections where a less trusted model was chosen (0 before any)."""
        return self.quality_costs / self.compared if self.compared else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The counters and rates, JSON-ready."""
        return {
            "selections": self.selections,
            "hits": self.hits,
            "misses": self.misses,
            "swaps": self.swaps,
            "evictions": self.evictions,
            "bytes_loaded": self.bytes_loaded,
            "load_s": self.load_s,
            "compared": self.compared,
            "quality_costs": self.quality_costs,
            "hit_rate": self.hit_rate,
            "swaps_per_selection": self.swaps_per_selection,
            "quality_cost_rate": self.quality_cost_rate,
        }
