"""moe-agents: mixtures of experts over LLM agents.

The public API is what ``__all__`` lists: the values (``Query``, ``Selection``, ``Result``, ...),
the errors, ``Pipeline`` and its loader, the experts, aggregators and backends, and the few
configurations users build in code. Algorithms (``moe_agents.routing.select``, ``permission``) and
extension points live in their subpackages.

A router picks the best experts for each query (a gate over exemplar embeddings mixed with each
expert's self-assessment), the experts answer concurrently through their model backends (litellm
for any provider, transformers for local weights), and an aggregator merges the answers.

    >>> import moe_agents
    >>> async with moe_agents.load_pipeline("configs/default.yaml") as pipeline:   # doctest: +SKIP
    ...     result = await pipeline.run("Write a Python function that reverses a string")
"""

from .aggregators import Aggregation as Aggregation
from .aggregators import Aggregator as Aggregator
from .aggregators import EnsembleAggregator as EnsembleAggregator
from .aggregators import SequentialAggregator as SequentialAggregator
from .aggregators import VotingAggregator as VotingAggregator
from .aggregators import WeightedAggregator as WeightedAggregator
from .backends import Backend as Backend
from .backends import Completion as Completion
from .backends import GenerationSettings as GenerationSettings
from .backends import LiteLLMBackend as LiteLLMBackend
from .backends import ReplayBackend as ReplayBackend
from .backends import TransformersBackend as TransformersBackend
from .budget import BudgetConfig as BudgetConfig
from .config import default_config_path as default_config_path
from .config import load_pipeline as load_pipeline
from .errors import BackendError as BackendError
from .errors import BackendTimeout as BackendTimeout
from .errors import BackendUnavailable as BackendUnavailable
from .errors import ConfigError as ConfigError
from .errors import DeadlineExceeded as DeadlineExceeded
from .errors import ExpertsFailed as ExpertsFailed
from .errors import InvalidInput as InvalidInput
from .errors import MoEError as MoEError
from .errors import NoCapableExpert as NoCapableExpert
from .errors import Overloaded as Overloaded
from .errors import RunError as RunError
from .errors import UnknownResult as UnknownResult
from .experts import CodingExpert as CodingExpert
from .experts import EpistemicExpert as EpistemicExpert
from .experts import Expert as Expert
from .experts import ExpertCapability as ExpertCapability
from .experts import ExpertPolicy as ExpertPolicy
from .experts import ExpertStats as ExpertStats
from .experts import KnowledgeExpert as KnowledgeExpert
from .experts import LLMExpert as LLMExpert
from .experts import OmniExpert as OmniExpert
from .experts import ReasoningExpert as ReasoningExpert
from .inputs import InputLimits as InputLimits
from .memory import MemoryConfig as MemoryConfig
from .memory import MemoryStore as MemoryStore
from .pipeline import AnswerStream as AnswerStream
from .pipeline import Pipeline as Pipeline
from .registry import register_aggregator as register_aggregator
from .registry import register_backend as register_backend
from .registry import register_expert as register_expert
from .registry import register_scorer as register_scorer
from .reliability import BreakerPolicy as BreakerPolicy
from .reliability import RetryPolicy as RetryPolicy
from .routing import ContextConfig as ContextConfig
from .routing import Encoder as Encoder
from .routing import GateConfig as GateConfig
from .routing import Preset as Preset
from .routing import Router as Router
from .routing import RouterConfig as RouterConfig
from .routing import Rule as Rule
from .routing import SentenceEncoder as SentenceEncoder
from .routing import TrustStore as TrustStore
from .types import Answer as Answer
from .types import Attachment as Attachment
from .types import ExpertScore as ExpertScore
from .types import Query as Query
from .types import Result as Result
from .types import Selection as Selection
from .types import Usage as Usage

__version__ = "0.1.0"

__all__ = [
    "Aggregation",
    "Aggregator",
    "Answer",
    "AnswerStream",
    "Attachment",
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BreakerPolicy",
    "BudgetConfig",
    "CodingExpert",
    "Completion",
    "ConfigError",
    "ContextConfig",
    "DeadlineExceeded",
    "Encoder",
    "EnsembleAggregator",
    "EpistemicExpert",
    "Expert",
    "ExpertCapability",
    "ExpertPolicy",
    "ExpertScore",
    "ExpertStats",
    "ExpertsFailed",
    "GateConfig",
    "GenerationSettings",
    "InputLimits",
    "InvalidInput",
    "KnowledgeExpert",
    "LLMExpert",
    "LiteLLMBackend",
    "MemoryConfig",
    "MemoryStore",
    "MoEError",
    "NoCapableExpert",
    "OmniExpert",
    "Overloaded",
    "Pipeline",
    "Preset",
    "Query",
    "ReasoningExpert",
    "ReplayBackend",
    "Result",
    "RetryPolicy",
    "Router",
    "RouterConfig",
    "Rule",
    "RunError",
    "Selection",
    "SentenceEncoder",
    "SequentialAggregator",
    "TransformersBackend",
    "TrustStore",
    "UnknownResult",
    "Usage",
    "VotingAggregator",
    "WeightedAggregator",
    "default_config_path",
    "load_pipeline",
    "register_aggregator",
    "register_backend",
    "register_expert",
    "register_scorer",
]
