"""The YAML schema of a pipeline file: one pydantic model per section (``PipelineSpec`` is the
whole file), and the translation of a validation failure into a ``ConfigError`` that names the
file, line and key (see ``moe_agents.config`` for the format)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from ..budget import BudgetConfig
from ..cluster.settings import RayConfig
from ..errors import ConfigError
from ..experts.policy import ExpertPolicy
from ..inputs import InputLimits
from ..management.ab import ABTest
from ..management.health import HealthPolicy
from ..management.manager import ManagementConfig
from ..management.ranking import RankingWeights
from ..management.scaling import ScalingPolicy
from ..memory.values import MemoryConfig
from ..reliability import BreakerPolicy, RetryPolicy
from ..residency import GB, ResidencyConfig
from ..resources import BUNDLED_ENCODER
from ..routing.context import ContextConfig
from ..routing.permission import SelectConfig
from ..routing.router import RouterConfig
from ..server.settings import ServerConfig
from .derive import Section, limits, section

__all__ = [
    "ABTestSpec",
    "AggregationSpec",
    "BudgetSpec",
    "CircuitSpec",
    "ContextSpec",
    "DocumentSpec",
    "ExpertSpec",
    "GuardSpec",
    "HealthSpec",
    "LimitsSpec",
    "Loc",
    "ManagementSpec",
    "MemorySpec",
    "PipelineSpec",
    "RankingSpec",
    "ResourcesSpec",
    "RetrySpec",
    "RouterSpec",
    "RuleSpec",
    "RuntimeSpec",
    "ScalingSpec",
    "SettingsSpec",
    "TrustSpec",
    "dotted",
    "line_of",
    "located_error",
]

Loc = tuple[str | int, ...]
"""A key path in a configuration (``("experts", 2, "kind")``)."""


_Spec = Section


class RuleSpec(_Spec):
    """One entry of ``router.rules:``."""

    pattern: str
    experts: list[str] = Field(min_length=1)
    name: str | None = None


_ROUTER_SUBSECTIONS = ("gate", "selection", "context", "momentum", "seed", "tuning", "cv")


class RouterSpec(section(RouterConfig, exclude=_ROUTER_SUBSECTIONS)):  # type: ignore[misc]
    """``router:``: the scalar fields of ``RouterConfig`` (their defaults and bounds), the encoder,
    the gate (``gate:`` takes ``GateConfig``'s fields, ``momentum:`` ``MomentumConfig``'s,
    ``tuning:`` ``TuningConfig``'s, ``cv:`` ``CVConfig``'s), rules and exemplars. Trust-first
    ranking (``selection``, ``context``, ``seed``) is set under ``trust:``."""

    encoder: str = BUNDLED_ENCODER
    gate: dict[str, Any] = Field(default_factory=dict)
    gate_path: str | None = None
    exemplars_file: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    momentum: dict[str, Any] = Field(default_factory=dict)
    tuning: dict[str, Any] = Field(default_factory=dict)
    cv: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tune", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: Any) -> Any:
        """YAML reads a bare ``on``/``off`` as true/false; they mean the modes of the same names."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class ContextSpec(section(ContextConfig)):  # type: ignore[misc]
    """``trust.context:``: the fields of ``ContextConfig``."""


class BudgetSpec(section(BudgetConfig)):  # type: ignore[misc]
    """``trust.budget:`` (per session): the fields of ``BudgetConfig``."""


class TrustSpec(section(SelectConfig)):  # type: ignore[misc]
    """``trust:``: the fields of ``SelectConfig``, the store (``path``, ``decay`` and ``prior``,
    which ``TrustStore`` checks), ``context:`` and ``budget:``, and the exploration ``seed``."""

    enabled: bool = True
    path: str | None = None
    decay: float = Field(default=0.98, gt=0.0, le=1.0)
    prior: float = Field(default=0.5, ge=0.0, le=1.0)
    context: ContextSpec = ContextSpec()
    budget: BudgetSpec = BudgetSpec()
    seed: int | None = None


_RESIDENCY = ResidencyConfig(budget_bytes=1)  # the budget has no default; the other fields do


class ResourcesSpec(
    section(ResidencyConfig, exclude=("budget_bytes", "bandwidth_bytes_per_s", "hysteresis"))  # type: ignore[misc]
):
    """``resources:``: memory for local models (``transformers`` backends); ``ResidencyConfig``'s
    fields, with the budget and the bandwidth in GB (no budget: no residency). Its hysteresis is
    the trust section's."""

    memory_budget_gb: float | None = Field(default=None, **limits(ResidencyConfig, "budget_bytes"))
    bandwidth_gb_s: float = Field(
        default=_RESIDENCY.bandwidth_bytes_per_s / GB, **limits(ResidencyConfig, "bandwidth_bytes_per_s")
    )


class RetrySpec(section(RetryPolicy)):  # type: ignore[misc]
    """``retry:`` of a backend: retries of retryable errors (rate limits, timeouts, 5xx); the fields
    of ``RetryPolicy``."""


class CircuitSpec(section(BreakerPolicy)):  # type: ignore[misc]
    """``circuit:`` of a backend: its circuit breaker; the fields of ``BreakerPolicy``."""


class GuardSpec(_Spec):
    """The failure-handling keys every backend accepts besides its kind's own."""

    retry: RetrySpec = RetrySpec()
    circuit: CircuitSpec = CircuitSpec()


class LimitsSpec(section(InputLimits)):  # type: ignore[misc]
    """``limits:``: bounds on queries; the fields of ``InputLimits``."""


class RuntimeSpec(_Spec):
    """``runtime:``: deadlines and capacity of the whole pipeline (``Pipeline``'s arguments)."""

    request_timeout_s: float | None = Field(default=None, gt=0.0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_queue: int = Field(default=0, ge=0)


class MemorySpec(section(MemoryConfig)):  # type: ignore[misc]
    """``memory:``: conversation memory for queries with a ``session_id``; the fields of
    ``MemoryConfig`` (``similarity_threshold`` and ``same_expert`` decide when recent turns are
    given, see ``moe_agents.continuity``)."""


class RankingSpec(section(RankingWeights)):  # type: ignore[misc]
    """``management.ranking:``: the fields of ``RankingWeights``."""


class ScalingSpec(section(ScalingPolicy)):  # type: ignore[misc]
    """``management.scaling:``: the fields of ``ScalingPolicy``."""


class HealthSpec(section(HealthPolicy)):  # type: ignore[misc]
    """``management.health:``: the fields of ``HealthPolicy`` (left out: no health checks)."""


class ManagementSpec(section(ManagementConfig, exclude=("ranking", "scaling", "health", "ab_tests"))):  # type: ignore[misc]
    """``management:``: the fields of ``ManagementConfig`` (``ab_tests:`` is a section of its own)."""

    ranking: RankingSpec = RankingSpec()
    scaling: ScalingSpec = ScalingSpec()
    health: HealthSpec | None = None


class ABTestSpec(section(ABTest)):  # type: ignore[misc]
    """One entry of ``ab_tests:``: the fields of ``ABTest``."""


class AggregationSpec(_Spec):
    """``aggregation:``: the strategy and its options (``synthesis_expert`` and ``options``, which
    the strategy's model in the registry validates, see ``moe_agents.kinds``)."""

    strategy: str = "weighted"
    synthesis_expert: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


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


class ExpertSpec(section(ExpertPolicy, exclude=("scorer", "context_tokens"))):  # type: ignore[misc]
    """One entry of ``experts:``: its kind, backends and prompt, the fields of its ``ExpertPolicy``
    (``scorer`` by registered name), and ``options``, the kind's own (validated by the kind's
    options model in the registry)."""

    name: str = Field(min_length=1)
    kind: str
    backends: list[str | dict[str, Any]] = Field(default_factory=list)
    system_prompt: str | None = None
    exemplars: list[str] | None = None
    documents: list[str | DocumentSpec] | None = None
    settings: SettingsSpec | None = None
    scorer: str | None = None
    context_tokens: int | None = Field(default=None, **limits(ExpertPolicy, "context_tokens"))
    adapter: str | None = None
    routed: bool = True
    options: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(_Spec):
    """A whole pipeline file."""

    name: str | None = None
    description: str | None = None
    router: RouterSpec = RouterSpec()
    aggregation: AggregationSpec = AggregationSpec()
    backends: dict[str, dict[str, Any]] = Field(default_factory=dict)
    experts: list[ExpertSpec] = Field(min_length=1)
    trust: TrustSpec | None = None
    resources: ResourcesSpec = ResourcesSpec()
    limits: LimitsSpec = LimitsSpec()
    runtime: RuntimeSpec = RuntimeSpec()
    memory: MemorySpec | None = None
    management: ManagementSpec = ManagementSpec()
    ab_tests: list[ABTestSpec] = Field(default_factory=list)
    server: ServerConfig = ServerConfig()
    ray: RayConfig | None = None


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
