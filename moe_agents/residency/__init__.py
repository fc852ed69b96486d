"""Byte-budgeted model residency with hysteresis (the seed's "model zoo").

``manager`` holds ``Residency``, which loads and evicts models within a byte budget (its docstring
tells the rules); ``config`` its settings, ``metrics`` its counters, ``model`` what it manages, and
``backend`` the ``ResidentBackend`` that puts a backend's model under it.
"""

from .backend import ResidentBackend as ResidentBackend
from .config import GB as GB
from .config import ResidencyConfig as ResidencyConfig
from .manager import BLOCKED_COST_S as BLOCKED_COST_S
from .manager import Residency as Residency
from .metrics import ResidencyMetrics as ResidencyMetrics
from .model import Model as Model

__all__ = [
    "BLOCKED_COST_S",
    "GB",
    "Model",
    "Residency",
    "ResidencyConfig",
    "ResidencyMetrics",
    "ResidentBackend",
]
