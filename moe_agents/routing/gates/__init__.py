"""Gates: from a query's embedding to a probability per expert, learned from the experts' exemplars.

``base`` holds what every kind shares, ``similarity`` the training-free kinds (``centroid``,
``knn``), ``mlp`` the trained network, ``ensemble`` their mean, and ``fitting`` the entry points
that pick a kind.
"""

from .base import FitReport as FitReport
from .base import Gate as Gate
from .base import GateConfig as GateConfig
from .ensemble import EnsembleGate as EnsembleGate
from .fitting import fit_gate as fit_gate
from .fitting import gate_fingerprint as gate_fingerprint
from .fitting import load_gate as load_gate
from .mlp import GatingNetwork as GatingNetwork
from .mlp import calibrate_temperature as calibrate_temperature
from .similarity import CentroidGate as CentroidGate
from .similarity import KNNGate as KNNGate

__all__ = [
    "CentroidGate",
    "EnsembleGate",
    "FitReport",
    "Gate",
    "GateConfig",
    "GatingNetwork",
    "KNNGate",
    "calibrate_temperature",
    "fit_gate",
    "gate_fingerprint",
    "load_gate",
]
