"""Token-scale routing inside transformers MoE models: cache-, trust- and load-aware expert selection.

Imports torch and transformers; ``moe_agents`` never imports this package itself.
"""

from __future__ import annotations

from .cache import POLICIES as POLICIES
from .cache import ExpertCache as ExpertCache
from .cache import belady_hit_rate as belady_hit_rate
from .calibrate import calibrate_trust as calibrate_trust
from .metrics import CacheStats as CacheStats
from .metrics import dead_experts as dead_experts
from .metrics import hit_rate as hit_rate
from .metrics import load_entropy as load_entropy
from .metrics import max_vio as max_vio
from .offload import OffloadHandle as OffloadHandle
from .offload import OffloadStats as OffloadStats
from .offload import offload_experts as offload_experts
from .offload import parameter_bytes as parameter_bytes
from .patch import PatchHandle as PatchHandle
from .patch import patch as patch
from .patch import supported_routers as supported_routers
from .policy import TokenPolicy as TokenPolicy
from .router import LayerState as LayerState
from .selection import Routing as Routing
from .selection import select_experts as select_experts
from .tune import Tuning as Tuning
from .tune import tune_policy as tune_policy

__all__ = [
    "POLICIES",
    "CacheStats",
    "ExpertCache",
    "LayerState",
    "OffloadHandle",
    "OffloadStats",
    "PatchHandle",
    "Routing",
    "TokenPolicy",
    "Tuning",
    "belady_hit_rate",
    "calibrate_trust",
    "dead_experts",
    "hit_rate",
    "load_entropy",
    "max_vio",
    "offload_experts",
    "parameter_bytes",
    "patch",
    "select_experts",
    "supported_routers",
    "tune_policy",
]
