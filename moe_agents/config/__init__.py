"""YAML pipelines: one loader (``load_pipeline``), the schema with located errors, the builder.

- ``loader``: reading a file (``${ENV}``, duplicate and merge keys rejected), errors located by
  file, line and key path, and ``load_pipeline``;
- ``spec``: the schema (pydantic models whose defaults and bounds come from the frozen configs);
- ``build``: from a validated spec to a ``Pipeline`` (backends, experts, router, stores);
- ``seed``: the seed plan's ``moe:`` shape, translated into today's keys before validation.
"""

from .loader import AggregationSpec as AggregationSpec
from .loader import DocumentSpec as DocumentSpec
from .loader import ExpertSpec as ExpertSpec
from .loader import PipelineSpec as PipelineSpec
from .loader import RouterSpec as RouterSpec
from .loader import RuleSpec as RuleSpec
from .loader import SettingsSpec as SettingsSpec
from .loader import TrustSpec as TrustSpec
from .loader import build_pipeline as build_pipeline
from .loader import default_config_path as default_config_path
from .loader import load_pipeline as load_pipeline
from .loader import read_config as read_config

__all__ = [
    "AggregationSpec",
    "DocumentSpec",
    "ExpertSpec",
    "PipelineSpec",
    "RouterSpec",
    "RuleSpec",
    "SettingsSpec",
    "TrustSpec",
    "build_pipeline",
    "default_config_path",
    "load_pipeline",
    "read_config",
]
