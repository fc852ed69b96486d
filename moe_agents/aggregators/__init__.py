"""Aggregators merge the selected experts' answers: ``voting``, ``weighted``, ``sequential``, ``ensemble``."""

from .base import Aggregation as Aggregation
from .base import Aggregator as Aggregator
from .base import AskExpert as AskExpert
from .base import quote_as_data as quote_as_data
from .ensemble import EnsembleAggregator as EnsembleAggregator
from .sequential import SequentialAggregator as SequentialAggregator
from .voting import VotingAggregator as VotingAggregator
from .weighted import WeightedAggregator as WeightedAggregator

BUILTIN_AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (VotingAggregator, WeightedAggregator, SequentialAggregator, EnsembleAggregator)
}

__all__ = [
    "BUILTIN_AGGREGATORS",
    "Aggregation",
    "Aggregator",
    "AskExpert",
    "EnsembleAggregator",
    "SequentialAggregator",
    "VotingAggregator",
    "WeightedAggregator",
    "quote_as_data",
]
