"""Routing: sentence encoders, gates fitted from exemplars, hybrid rules, and the router that turns
a query into a ``Selection``."""

from .encoder import BatchingEncoder as BatchingEncoder
from .encoder import Encoder as Encoder
from .encoder import LiteLLMEncoder as LiteLLMEncoder
from .encoder import SentenceEncoder as SentenceEncoder
from .encoder import bundled_encoder as bundled_encoder
from .exemplars import read_exemplars_jsonl as read_exemplars_jsonl
from .gate import FitReport as FitReport
from .gate import Gate as Gate
from .gate import GateConfig as GateConfig
from .gate import fit_gate as fit_gate
from .gate import load_gate as load_gate
from .mlp import GatingNetwork as GatingNetwork
from .router import Router as Router
from .router import RouterConfig as RouterConfig
from .rules import Rule as Rule

__all__ = [
    "BatchingEncoder",
    "Encoder",
    "FitReport",
    "Gate",
    "GateConfig",
    "GatingNetwork",
    "LiteLLMEncoder",
    "Router",
    "RouterConfig",
    "Rule",
    "SentenceEncoder",
    "bundled_encoder",
    "fit_gate",
    "load_gate",
    "read_exemplars_jsonl",
]
