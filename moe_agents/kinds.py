"""How YAML builds an expert kind or an aggregation strategy, and the options of the built-in ones.

The contract is the one backends have (``moe_agents.backends.specs.BackendKind``): a kind is a
pydantic model of its own YAML options and a way to build it, and the YAML builder validates the
options with the model (an unknown one is an error that names the valid ones).

- ``ExpertKind``: every expert takes the keys every ``experts:`` entry has (``name``, ``backends``,
  ``system_prompt``, ``exemplars``, ``settings`` and its ``ExpertPolicy``); its kind's model names
  the rest: the keys under ``options:``, and ``documents:`` (knowledge) or ``adapter:``
  (epistemic), which YAML writes beside them.
- ``AggregatorKind``: the keys under ``aggregation.options:``, and ``aggregation.synthesis_expert:``
  (ensemble), written beside them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .aggregators.base import Aggregator
from .aggregators.ensemble import EnsembleAggregator
from .aggregators.sequential import SequentialAggregator
from .aggregators.voting import VotingAggregator
from .aggregators.weighted import WeightedAggregator
from .experts.base import Expert
from .experts.coding import CodingExpert
from .experts.epistemic import EpistemicExpert
from .experts.knowledge import KnowledgeExpert
from .experts.omni import OmniExpert
from .experts.reasoning import ReasoningExpert

__all__ = [
    "BUILTIN_AGGREGATOR_KINDS",
    "BUILTIN_EXPERT_KINDS",
    "AggregatorKind",
    "AggregatorOptions",
    "EnsembleOptions",
    "EpistemicOptions",
    "ExpertKind",
    "ExpertOptions",
    "KnowledgeOptions",
    "VotingOptions",
]


class ExpertOptions(BaseModel):
    """The options of a kind that has none beyond every expert's keys (``coding``, ``reasoning``,
    ``omni``); a kind with options subclasses it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _default(cls: type, name: str) -> Any:
    """The default of the dataclass field ``name`` of ``cls`` (one statement of it)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


class KnowledgeOptions(ExpertOptions):
    """``kind: knowledge``: ``documents:`` and, under ``options:``, ``KnowledgeExpert``'s retrieval
    settings (its defaults; it checks their ranges)."""

    documents: list[str | Path] = []
    top_passages: int = _default(KnowledgeExpert, "top_passages")
    passage_chars: int = _default(KnowledgeExpert, "passage_chars")
    min_score: float = _default(KnowledgeExpert, "min_score")


class EpistemicOptions(ExpertOptions):
    """``kind: epistemic``: ``adapter:``, a LoRA stance adapter its local backends apply."""

    adapter: str | None = None


@dataclass(frozen=True, slots=True)
class ExpertKind:
    """How YAML builds an expert kind.

    Attributes:
        cls: the expert class, called with every expert's keys (``name``, ``policy``, and
            ``backends``, ``system_prompt``, ``exemplars``, ``settings`` when given) and the
            options YAML set, as keywords.
        options: the pydantic model of its own options (an ``ExpertOptions``).
        encoder: it also takes the pipeline's encoder as ``encoder``.
    """

    cls: type[Expert]
    options: type[BaseModel] = ExpertOptions
    encoder: bool = False

    def build(self, common: Mapping[str, Any], options: BaseModel, encoder: Any) -> Expert:
        """The expert, from every expert's keys and its validated options (only those YAML set, so
        the class's own defaults hold for the rest)."""
        extra = {"encoder": encoder} if self.encoder else {}
        return self.cls(**common, **options.model_dump(exclude_unset=True), **extra)


BUILTIN_EXPERT_KINDS: Mapping[str, ExpertKind] = MappingProxyType(
    {
        "coding": ExpertKind(CodingExpert),
        "reasoning": ExpertKind(ReasoningExpert),
        "knowledge": ExpertKind(KnowledgeExpert, KnowledgeOptions, encoder=True),
        "epistemic": ExpertKind(EpistemicExpert, EpistemicOptions),
        "omni": ExpertKind(OmniExpert),
    }
)
"""The built-in expert kinds by name."""


class AggregatorOptions(BaseModel):
    """The options of a strategy that has none (``weighted``, ``sequential``); a strategy with
    options subclasses it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class VotingOptions(AggregatorOptions):
    """``strategy: voting``: what a vote compares, and whether votes are weighted."""

    key: Literal["answer", "number"] = "answer"
    weighted: bool = False


class EnsembleOptions(AggregatorOptions):
    """``strategy: ensemble``: the expert that writes the synthesis (default: the best answer's)."""

    synthesis_expert: str | None = None


@dataclass(frozen=True, slots=True)
class AggregatorKind:
    """How YAML builds an aggregation strategy.

    Attributes:
        cls: the aggregator class, called with the options YAML set, as keywords.
        options: the pydantic model of its options (an ``AggregatorOptions``).
    """

    cls: type[Aggregator]
    options: type[BaseModel] = AggregatorOptions

    def build(self, options: BaseModel) -> Aggregator:
        """The aggregator, from its validated options (only those YAML set, so the class's own
        defaults hold for the rest)."""
        return self.cls(**options.model_dump(exclude_unset=True))


BUILTIN_AGGREGATOR_KINDS: Mapping[str, AggregatorKind] = MappingProxyType(
    {
        "weighted": AggregatorKind(WeightedAggregator),
        "voting": AggregatorKind(VotingAggregator, VotingOptions),
        "sequential": AggregatorKind(SequentialAggregator),
        "ensemble": AggregatorKind(EnsembleAggregator, EnsembleOptions),
    }
)
"""The built-in aggregation strategies by name."""
