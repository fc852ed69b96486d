"""Token-scale routing inside transformers MoE models: cache-, trust- and load-aware expert selection.

Imports torch and transformers; ``moe_agents`` never imports this package itself.
"""

from __future__ import annotations

from .cache import POLICIES as POLICIES
from .cache import ExpertCache as ExpertCache
from .cache import belady_hit_rate as belady_hit_rate
from .metrics import CacheStats as CacheStats
from .metrics import dead_experts as dead_experts
from .metrics import hit_rate as hit_rate
from .metrics import load_entropy as load_entropy
from .metrics import max_vio as max_vio
from .patch import PatchHandle as PatchHandle
from .patch import patch as patch
from .patch import supported_routers as supported_routers
from .policy import TokenPolicy as TokenPolicy
from .router import LayerState as LayerState
from .selection import Routing as Routing
from .selection import select_experts as select_experts

__all__ = [
    "POLICIES",
    "CacheStats",
    "ExpertCache",
    "LayerState",
    "PatchHandle",
    "Routing",
    "TokenPolicy",
    "belady_hit_rate",
    "dead_experts",
    "hit_rate",
    "load_entropy",
    "max_vio",
    "patch",
    "select_experts",
    "supported_routers",
]
