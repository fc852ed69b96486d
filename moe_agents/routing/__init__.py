"""Routing: sentence encoders, gates fitted from exemplars, hybrid rules, trust contexts, the trust
store, the permission function, and the router that turns a query into a ``Selection``."""

from .context import ContextConfig as ContextConfig
from .context import KMeansContexts as KMeansContexts
from .encoder import BatchingEncoder as BatchingEncoder
from .encoder import Encoder as Encoder
from .encoder import LiteLLMEncoder as LiteLLMEncoder
from .encoder import SentenceEncoder as SentenceEncoder
from .encoder import bundled_encoder as bundled_encoder
from .exemplars import read_exemplars_jsonl as read_exemplars_jsonl
from .gates import FitReport as FitReport
from .gates import Gate as Gate
from .gates import GateConfig as GateConfig
from .gates import GatingNetwork as GatingNetwork
from .gates import fit_gate as fit_gate
from .gates import load_gate as load_gate
from .onnx_encoder import OnnxEncoder as OnnxEncoder
from .onnx_encoder import bundled_onnx_encoder as bundled_onnx_encoder
from .onnx_encoder import local_encoder as local_encoder
from .permission import Candidates as Candidates
from .permission import Preset as Preset
from .permission import SelectConfig as SelectConfig
from .permission import permission as permission
from .permission import select as select
from .router import Router as Router
from .router import RouterConfig as RouterConfig
from .rules import Rule as Rule
from .trust import TrustStat as TrustStat
from .trust import TrustStore as TrustStore

__all__ = [
    "BatchingEncoder",
    "Candidates",
    "ContextConfig",
    "Encoder",
    "FitReport",
    "Gate",
    "GateConfig",
    "GatingNetwork",
    "KMeansContexts",
    "LiteLLMEncoder",
    "OnnxEncoder",
    "Preset",
    "Router",
    "RouterConfig",
    "Rule",
    "SelectConfig",
    "SentenceEncoder",
    "TrustStat",
    "TrustStore",
    "bundled_encoder",
    "bundled_onnx_encoder",
    "fit_gate",
    "load_gate",
    "local_encoder",
    "permission",
    "read_exemplars_jsonl",
    "select",
]
