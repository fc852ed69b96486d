"""The YAML schema of a pipeline file: one pydantic model per section (``PipelineSpec`` is the
whole file), and the translation of a validation failure into a ``ConfigError`` that names the
file, line and key (see ``moe_agents.config`` for the format)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..budget import BudgetConfig
from ..continuity import THRESHOLD as CONTINUE_THRESHOLD
from ..errors import ConfigError
from ..inputs import InputLimits
from ..reliability import BreakerPolicy, RetryPolicy
from ..residency import GB, ResidencyConfig
from ..resources import BUNDLED_ENCODER
from ..routing.context import ContextConfig
from ..routing.permission import SelectConfig
from ..routing.router import RouterConfig
from ..server.settings import ServerConfig

__all__ = [
    "ABTestSpec",
    "AggregationSpec",
    "BudgetSpec",
    "CircuitSpec",
    "ContextSpec",
    "DocumentSpec",
    "ExpertSpec",
    "GuardSpec",
    "LimitsSpec",
    "Loc",
    "ManagementSpec",
    "MemorySpec",
    "PipelineSpec",
    "ResourcesSpec",
    "RetrySpec",
    "RouterSpec",
    "RuleSpec",
    "RuntimeSpec",
    "SettingsSpec",
    "TrustSpec",
    "dotted",
    "line_of",
    "located_error",
]

Loc = tuple[str | int, ...]
"""A key path in a configuration (``("experts", 2, "kind")``)."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


_ROUTER = RouterConfig()


class RuleSpec(_Spec):
    """One entry of ``router.rules:``."""

    pattern: str
    experts: list[str] = Field(min_length=1)
    name: str | None = None


class RouterSpec(_Spec):
    """``router:`` (defaults: those of ``RouterConfig``)"""

    encoder: str = BUNDLED_ENCODER
    top_k: int = Field(default=_ROUTER.top_k, ge=1)
    min_confidence: float = Field(default=_ROUTER.min_confidence, ge=0.0, le=1.0)
    gate_weight: float = Field(default=_ROUTER.gate_weight, ge=0.0, le=1.0)
    fallback_expert: str | None = None
    assess_top: int = Field(default=_ROUTER.assess_top, ge=1)
    overload_penalty: float = Field(default=_ROUTER.overload_penalty, ge=0.0, le=1.0)
    cache_size: int = Field(default=_ROUTER.cache_size, ge=0)
    batch_window_s: float = Field(default=_ROUTER.batch_window_s, ge=0.0)
    max_batch: int = Field(default=_ROUTER.max_batch, ge=1)
    gate_cache_dir: str | None = _ROUTER.gate_cache_dir
    gate: dict[str, Any] = {}
    gate_path: str | None = None
    exemplars_file: str | None = None
    rules: list[RuleSpec] = []
    momentum: dict[str, Any] = {}


_SELECT = SelectConfig()
_CONTEXT = ContextConfig()
_BUDGET = BudgetConfig()


class ContextSpec(_Spec):
    """``trust.context:``"""

    kind: str = _CONTEXT.kind
    clusters: int = Field(default=_CONTEXT.clusters, ge=1)
    online: bool = _CONTEXT.online
    seed: int = _CONTEXT.seed


class BudgetSpec(_Spec):
    """``trust.budget:`` (per session)"""

    usd: float | None = Field(default=None, ge=0.0)
    tokens: int | None = Field(default=None, ge=0)
    cheap_price: float = Field(default=_BUDGET.cheap_price, ge=0.0)
    max_sessions: int = Field(default=_BUDGET.max_sessions, ge=1)


class TrustSpec(_Spec):
    """``trust:`` (defaults: the seed's, via ``SelectConfig``, ``ContextConfig`` and ``TrustStore``)"""

    enabled: bool = True
    path: str | None = None
    min_evidence: int = Field(default=_SELECT.min_evidence, ge=1)
    epsilon: float = Field(default=_SELECT.epsilon, ge=0.0, le=1.0)
    low_trust_threshold: float = Field(default=_SELECT.low_trust_threshold, ge=0.0, le=1.0)
    hysteresis: float = Field(default=_SELECT.hysteresis, ge=0.0)
    cost_weight: float = Field(default=_SELECT.cost_weight, ge=0.0)
    capable: float = Field(default=_SELECT.capable, ge=0.0, le=1.0)
    decay: float = Field(default=0.98, gt=0.0, le=1.0)
    prior: float = Field(default=0.5, ge=0.0, le=1.0)
    context: ContextSpec = ContextSpec()
    budget: BudgetSpec = BudgetSpec()
    seed: int | None = None


_RESIDENCY = ResidencyConfig(budget_bytes=1)  # the budget has no default; the other fields do


class ResourcesSpec(_Spec):
    """``resources:``: memory for local models (``transformers`` backends)."""

    memory_budget_gb: float | None = Field(default=None, gt=0.0)
    bandwidth_gb_s: float = Field(default=_RESIDENCY.bandwidth_bytes_per_s / GB, gt=0.0)
    swap_cost_weight: float = Field(default=_RESIDENCY.swap_cost_weight, ge=0.0)
    swap_budget_s: float | None = Field(default=None, ge=0.0)
    swap_window_s: float = Field(default=_RESIDENCY.swap_window_s, gt=0.0)
    wait_s: float | None = Field(default=_RESIDENCY.wait_s, ge=0.0)


_RETRY = RetryPolicy()
_BREAKER = BreakerPolicy()


class RetrySpec(_Spec):
    """``retry:`` of a backend: retries of retryable errors (rate limits, timeouts, 5xx)."""

    attempts: int = Field(default=_RETRY.attempts, ge=1)
    initial_s: float = Field(default=_RETRY.initial_s, ge=0.0)
    max_s: float = Field(default=_RETRY.max_s, ge=0.0)
    jitter_s: float = Field(default=_RETRY.jitter_s, ge=0.0)


class CircuitSpec(_Spec):
    """``circuit:`` of a backend: its circuit breaker."""

    failures: int = Field(default=_BREAKER.failures, ge=1)
    cooldown_s: float = Field(default=_BREAKER.cooldown_s, gt=0.0)


class GuardSpec(_Spec):
    """The failure-handling keys every backend accepts besides its kind's own."""

    retry: RetrySpec = RetrySpec()
    circuit: CircuitSpec = CircuitSpec()


_LIMITS = InputLimits()


class LimitsSpec(_Spec):
    """``limits:``: bounds on queries."""

    max_query_chars: int = Field(default=_LIMITS.max_query_chars, ge=1)
    max_attachments: int = Field(default=_LIMITS.max_attachments, ge=0)
    max_attachment_bytes: int = Field(default=_LIMITS.max_attachment_bytes, ge=1)


class RuntimeSpec(_Spec):
    """``runtime:``: deadlines and capacity of the whole pipeline."""

    request_timeout_s: float | None = Field(default=None, gt=0.0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=0, ge=0)


class MemorySpec(_Spec):
    """``memory:``: conversation memory for queries with a ``session_id``; the fields of
    ``MemoryConfig`` (``similarity_threshold`` and ``same_expert`` decide when recent turns are
    given, see ``moe_agents.continuity``)."""

    path: str | None = None
    recent_turns: int = Field(default=8, ge=0)
    recall_k: int = Field(default=3, ge=0)
    weights: list[float] = Field(default=[0.3, 0.2, 0.3, 0.2], min_length=4, max_length=4)
    similarity_threshold: float = Field(default=CONTINUE_THRESHOLD, ge=-1.0, le=1.0)
    same_expert: bool = True


class ManagementSpec(_Spec):
    """``management:``; the nested mappings take the fields of ``RankingWeights``,
    ``ScalingPolicy`` and ``HealthPolicy``."""

    ranking: dict[str, float] = {}
    auto_scale: bool = False
    remove_underperforming: bool = False
    scaling: dict[str, Any] = {}
    health: dict[str, Any] | None = None
    interval_s: float = Field(default=5.0, gt=0.0)


class ABTestSpec(_Spec):
    """One entry of ``ab_tests:``."""

    name: str = Field(min_length=1)
    control: str
    treatment: str
    fraction: float = Field(default=0.5, gt=0.0, lt=1.0)
    seed: int = 0


class AggregationSpec(_Spec):
    """``aggregation:``"""

    strategy: str = "weighted"
    synthesis_expert: str | None = None
    options: dict[str, Any] = {}


class SettingsSpec(_Spec):
    """``settings:`` of an expert: generation settings for its calls."""

    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: list[str] | None = None


class DocumentSpec(_Spec):
    """One entry of ``documents:``: a file (relative to the YAML file) or inline text."""

    path: str | None = None
    text: str | None = None

    def resolve(self, base: Path) -> Path | str:
        if (self.path is None) == (self.text is None):
            raise ValueError("a document needs exactly one of path: or text:")
        if self.text is not None:
            return self.text
        return base / Path(self.path).expanduser()  # type: ignore[arg-type]


class ExpertSpec(_Spec):
    """One entry of ``experts:``. ``options`` are passed to the kind's constructor as keywords."""

    name: str = Field(min_length=1)
    kind: str
    backends: list[str | dict[str, Any]] = []
    max_load: int = Field(default=4, ge=1)
    timeout_s: float | None = Field(default=120.0, gt=0)
    system_prompt: str | None = None
    exemplars: list[str] | None = None
    documents: list[str | DocumentSpec] | None = None
    settings: SettingsSpec | None = None
    price: float = Field(default=0.0, ge=0.0)
    scorer: str | None = None
    context_tokens: int | None = Field(default=None, ge=0)
    adapter: str | None = None
    routed: bool = True
    options: dict[str, Any] = {}


class PipelineSpec(_Spec):
    """A whole pipeline file."""

    name: str | None = None
    description: str | None = None
    router: RouterSpec = RouterSpec()
    aggregation: AggregationSpec = AggregationSpec()
    backends: dict[str, dict[str, Any]] = {}
    experts: list[ExpertSpec] = Field(min_length=1)
    trust: TrustSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    limits: LimitsSpec = LimitsSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    memory: MemorySpec | None = None
    management: ManagementSpec = ManagementSpec()
    ab_tests: list[ABTestSpec] = []
    server: ServerConfig = ServerConfig()


def located_error(
    exc: ValidationError, path: Path | None, lines: Mapping[Loc, int], data: Any, prefix: Loc
) -> ConfigError:
    """The ``ConfigError`` for the first error of ``exc``, at ``prefix`` + its key path in ``data``."""
    first = exc.errors()[0]
    loc = (*prefix, *_data_loc(data, first["loc"]))
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"unknown key {loc[-1]!r}"
    elif first["type"] == "missing":
        message = f"missing required key {loc[-1]!r}"
    more = len(exc.errors()) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(message, path=path, line=line_of(lines, loc), key=dotted(loc))


def _data_loc(data: Any, loc: Sequence[str | int]) -> Loc:
    """Drops the parts of a pydantic error location that name union members, not data keys."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and part < len(data)
        ):
            data = data[part]  # type: ignore[index]
        elif isinstance(data, dict) and i == len(loc) - 1:
            pass  # a missing or unknown key of this mapping
        else:
            continue
        out.append(part)
    return tuple(out)


def line_of(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc``, or of its nearest enclosing key that has one."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def dotted(loc: Loc) -> str:
    """``("experts", 2, "kind")`` → ``"experts.2.kind"``."""
    return ".".join(str(p) for p in loc)
