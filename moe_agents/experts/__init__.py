"""Experts: the ``Expert`` interface, the ``LLMExpert`` base and the five built-in kinds."""

from collections.abc import Mapping
from types import MappingProxyType

from .base import Expert as Expert
from .base import ExpertCapability as ExpertCapability
from .base import ExpertStats as ExpertStats
from .base import LLMExpert as LLMExpert
from .base import Signal as Signal
from .coding import CodingExpert as CodingExpert
from .epistemic import EpistemicExpert as EpistemicExpert
from .knowledge import KnowledgeExpert as KnowledgeExpert
from .omni import OmniExpert as OmniExpert
from .policy import ExpertPolicy as ExpertPolicy
from .reasoning import ReasoningExpert as ReasoningExpert

__all__ = [
    "BUILTIN_EXPERTS",
    "CodingExpert",
    "EpistemicExpert",
    "Expert",
    "ExpertCapability",
    "ExpertPolicy",
    "ExpertStats",
    "KnowledgeExpert",
    "LLMExpert",
    "OmniExpert",
    "ReasoningExpert",
    "Signal",
]

BUILTIN_EXPERTS: Mapping[str, type[LLMExpert]] = MappingProxyType(
    {cls.kind: cls for cls in (CodingExpert, ReasoningExpert, KnowledgeExpert, EpistemicExpert, OmniExpert)}
)
"""The built-in expert classes by kind (``coding``, ``reasoning``, ``knowledge``, ``epistemic``, ``omni``)."""
