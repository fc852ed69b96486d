"""Building a ``Pipeline`` from a validated ``PipelineSpec``: every object the file describes, and
every failure translated into a ``ConfigError`` at the file, line and key that caused it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..aggregators.base import Aggregator
from ..backends.base import Backend, GenerationSettings
from ..budget import BudgetConfig
from ..cluster.settings import Placement
from ..core.validation import check_references
from ..errors import ConfigError, MoEError
from ..experts.base import Expert
from ..experts.policy import ExpertPolicy
from ..inputs import InputLimits
from ..management import ABTest, HealthPolicy, RankingWeights, ScalingPolicy
from ..management.manager import ManagementConfig
from ..memory import MemoryConfig, MemoryStore
from ..pipeline import Pipeline
from ..registry import Registry, registry
from ..reliability import BreakerPolicy, GuardedBackend, RetryPolicy
from ..residency import GB, Residency, ResidencyConfig, ResidentBackend
from ..resources import BUNDLED_ENCODER
from ..routing.context import ContextConfig
from ..routing.crossval import CVConfig
from ..routing.encoder import Encoder, LiteLLMEncoder
from ..routing.exemplars import read_exemplars_jsonl
from ..routing.gates import GateConfig
from ..routing.momentum import MomentumConfig
from ..routing.onnx_encoder import local_encoder
from ..routing.permission import SelectConfig
from ..routing.router import Router, RouterConfig
from ..routing.rules import Rule
from ..routing.trust import TrustStore
from ..routing.tuning import TuningConfig, find_fitted
from .derive import build
from .spec import (
    ExpertSpec,
    GuardSpec,
    Loc,
    ManagementSpec,
    PipelineSpec,
    dotted,
    line_of,
    located_error,
)

__all__ = ["build_pipeline"]

_SUBSECTIONS = (("momentum", "MomentumConfig"), ("tuning", "TuningConfig"), ("cv", "CVConfig"))


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
            build(
                ResidencyConfig,
                r,
                budget_bytes=int(r.memory_budget_gb * GB),
                hysteresis=trust.hysteresis if trust is not None else SelectConfig().hysteresis,
                bandwidth_bytes_per_s=r.bandwidth_gb_s * GB,
            )
        )

    def local(self, path: str) -> str:
        """``path`` relative to the YAML file when it exists there, else as written."""
        return str(self.base / path) if path.strip() and (self.base / path).exists() else path

    def error(self, message: str, loc: Loc) -> ConfigError:
        return ConfigError(message, path=self.path, line=line_of(self.lines, loc), key=dotted(loc))

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
        budget = build(BudgetConfig, trust.budget) if trust is not None else None
        rt = self.spec.runtime
        try:
            pipeline = Pipeline(
                experts,
                router=self.router(encoder, names),
                aggregator=aggregator,
                budget=budget,
                limits=build(InputLimits, self.spec.limits),
                request_timeout_s=rt.request_timeout_s,
                max_concurrency=rt.max_concurrency,
                max_queue=rt.max_queue,
                memory=self.memory(encoder),
                management=management,
                references_checked=True,
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
        parts: dict[str, tuple[type, BaseModel]] = {
            "ranking": (RankingWeights, m.ranking),
            "scaling": (ScalingPolicy, m.scaling),
        }
        if m.health is not None:
            parts["health"] = (HealthPolicy, m.health)
        built: dict[str, Any] = {}
        for key, (cls, section) in parts.items():
            try:  # the checks that relate fields (max_instances >= min_instances)
                built[key] = build(cls, section)
            except ConfigError as exc:
                raise self.error(exc.message, ("management", key)) from None
        try:
            return build(ManagementConfig, m, ab_tests=tuple(build(ABTest, t) for t in tests), **built)
        except ConfigError as exc:
            raise self.error(exc.message, ("ab_tests",)) from None

    def memory(self, encoder: Encoder) -> MemoryStore | None:
        m = self.spec.memory
        if m is None:
            return None
        path = None if m.path is None else m.path if m.path == ":memory:" else _relative(m.path, self.base)
        try:
            config = build(MemoryConfig, m, path=path)
            return MemoryStore(config, encoder=encoder)
        except MoEError as exc:
            raise self.error(str(exc), ("memory",)) from None

    def trust(self) -> tuple[TrustStore | None, SelectConfig, ContextConfig, int | None]:
        t = self.spec.trust
        if t is None or not t.enabled:
            return None, SelectConfig(), ContextConfig(), None
        try:
            select, context = build(SelectConfig, t), build(ContextConfig, t.context)
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
            config = build(
                RouterConfig,
                r,
                assess_top=max(r.assess_top, r.top_k),
                gate=gate_config,
                selection=select,
                context=context,
                seed=seed,
                momentum=MomentumConfig(**r.momentum),
                tuning=TuningConfig(**r.tuning),
                cv=CVConfig(**r.cv),
            )
            rules = [Rule(rule.pattern, tuple(rule.experts), rule.name) for rule in r.rules]
        except TypeError as exc:
            where = next(
                (key for key, cls in _SUBSECTIONS if cls in str(exc)),
                "gate",
            )
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
                gate = find_fitted(self.base / r.gate_path, encoder.name)
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
        """The router's encoder, shared with memory and knowledge experts; a local model folder
        runs on ``router.encoder_runtime``."""
        enc, runtime = self.spec.router.encoder, self.spec.router.encoder_runtime
        if enc.startswith("litellm:"):
            return LiteLLMEncoder(enc.removeprefix("litellm:"))
        try:
            path = enc if enc == BUNDLED_ENCODER else _relative(enc, self.base)
            return local_encoder(path, runtime=runtime)
        except ConfigError as exc:
            raise self.error(exc.message, ("router", "encoder_runtime")) from None

    def backend(self, raw: Mapping[str, Any], loc: Loc) -> Backend:
        kind_name = raw.get("kind")
        if not isinstance(kind_name, str):
            raise self.error(f"a backend needs `kind:` (known: {self.registry.backends.known()})", loc)
        try:
            kind = self.registry.backends.get(kind_name)
        except ConfigError as exc:
            raise self.error(exc.message, (*loc, "kind")) from None
        options = dict(raw)
        placement = self.placement(options.pop("placement", None), (*loc, "placement"))
        try:
            guard_spec = GuardSpec.model_validate(
                {k: options.pop(k) for k in ("retry", "circuit") if k in options}
            )
        except ValidationError as exc:
            raise located_error(exc, self.path, self.lines, dict(raw), loc) from exc
        try:
            spec = kind.spec.model_validate(options)
        except ValidationError as exc:
            raise located_error(exc, self.path, self.lines, dict(raw), loc) from exc
        if kind.local_paths:
            paths = {k: getattr(spec, k, None) for k in kind.local_paths}
            spec = spec.model_copy(update={k: self.local(v) for k, v in paths.items() if isinstance(v, str)})
        key = spec.model_dump_json() + guard_spec.model_dump_json()
        if placement is not None:
            key += placement.model_dump_json()
        if key not in self.by_spec:  # identical specs share one backend (one model load)
            try:
                built = (
                    kind.build(spec) if placement is None else self.on_ray(kind_name, spec, placement, loc)
                )
                residency = self.residency if kind.resident and placement is None else None
                if residency is not None:
                    built = ResidentBackend(built, residency)  # loaded on demand, within the budget
                self.by_spec[key] = GuardedBackend(
                    built,
                    retry=build(RetryPolicy, guard_spec.retry),
                    breaker=build(BreakerPolicy, guard_spec.circuit),
                    residency=residency,
                )
            except (TypeError, ValueError, ConfigError) as exc:
                message = exc.message if isinstance(exc, ConfigError) else str(exc)
                raise self.error(f"cannot build backend: {message}", loc) from exc
        return self.by_spec[key]

    def placement(self, raw: Any, loc: Loc) -> Placement | None:
        """A backend's ``placement:`` (it runs as a Ray Serve deployment), which needs ``ray:``."""
        if raw is None:
            return None
        if self.spec.ray is None:
            raise self.error("`placement:` runs a backend on Ray and needs a top-level `ray:` section", loc)
        try:
            return Placement.model_validate(raw)
        except ValidationError as exc:
            raise located_error(exc, self.path, self.lines, raw, loc) from exc

    def on_ray(self, kind: str, spec: Any, placement: Placement, loc: Loc) -> Backend:
        """The backend as a Ray Serve deployment named after its place in the file."""
        from ..cluster.proxy import RayBackend
        from ..cluster.replica import BackendMaker

        assert self.spec.ray is not None
        name = "-".join(str(part) for part in loc if part != "backends")
        return RayBackend(name, BackendMaker(kind, spec.model_dump()), placement, self.spec.ray)

    def expert(self, spec: ExpertSpec, index: int, encoder: Encoder) -> Expert:
        loc: Loc = ("experts", index)
        try:
            kind = self.registry.experts.get(spec.kind)
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
        common: dict[str, Any] = {"name": spec.name, "policy": self.policy(spec, loc)}
        if backends:
            common["backends"] = backends
        if spec.system_prompt is not None:
            common["system_prompt"] = spec.system_prompt
        if spec.exemplars is not None:
            common["exemplars"] = spec.exemplars
        if spec.settings is not None:
            s = spec.settings
            common["settings"] = GenerationSettings(
                s.max_tokens, s.temperature, s.top_p, tuple(s.stop) if s.stop is not None else None
            )
        given: dict[str, tuple[Any, Loc]] = {k: (v, (*loc, "options", k)) for k, v in spec.options.items()}
        if spec.documents is not None:  # written beside the options; a knowledge expert's
            docs: list[Path | str] = []
            for j, d in enumerate(spec.documents):
                try:
                    docs.append(d if isinstance(d, str) else d.resolve(self.base))
                except ValueError as exc:
                    raise self.error(str(exc), (*loc, "documents", j)) from None
            given["documents"] = (docs, (*loc, "documents"))
        if spec.adapter is not None:  # likewise, an epistemic expert's
            given["adapter"] = (self.local(spec.adapter), (*loc, "adapter"))
        options = self.options(kind.options, given, f"expert kind {spec.kind!r}")
        try:
            return kind.build(common, options, encoder)
        except (TypeError, ValueError, ConfigError) as exc:
            message = exc.message if isinstance(exc, ConfigError) else str(exc)
            raise self.error(f"cannot build expert {spec.name!r}: {message}", loc) from exc

    def options(self, model: type[BaseModel], given: Mapping[str, tuple[Any, Loc]], what: str) -> BaseModel:
        """A kind's options (value and key path of each) validated by its model; an unknown one is an
        error that names the valid ones."""
        valid = sorted(model.model_fields)
        for key, (_, where) in given.items():
            if key not in valid:
                takes = f"its options: {valid}" if valid else "it takes no options"
                raise self.error(f"{what} does not accept {key!r}; {takes}", where)
        try:
            return model.model_validate({k: v for k, (v, _) in given.items()})
        except ValidationError as exc:
            first = exc.errors()[0]
            name, *rest = first["loc"]
            raise self.error(first["msg"], (*given[str(name)][1], *rest)) from exc

    def policy(self, spec: ExpertSpec, loc: Loc) -> ExpertPolicy:
        scorer = None
        if spec.scorer is not None:
            try:
                scorer = self.registry.scorers.get(spec.scorer)
            except ConfigError as exc:
                raise self.error(exc.message, (*loc, "scorer")) from None
        context_tokens = ExpertPolicy().context_tokens if spec.context_tokens is None else spec.context_tokens
        try:
            return build(ExpertPolicy, spec, scorer=scorer, context_tokens=context_tokens)
        except ConfigError as exc:
            raise self.error(exc.message, loc) from None

    def aggregator(self) -> Aggregator:
        agg = self.spec.aggregation
        try:
            kind = self.registry.aggregators.get(agg.strategy)
        except ConfigError as exc:
            raise self.error(exc.message, ("aggregation", "strategy")) from None
        given: dict[str, tuple[Any, Loc]] = {
            k: (v, ("aggregation", "options", k)) for k, v in agg.options.items()
        }
        if agg.synthesis_expert is not None:  # written beside the options
            given["synthesis_expert"] = (agg.synthesis_expert, ("aggregation", "synthesis_expert"))
        options = self.options(kind.options, given, f"strategy {agg.strategy!r}")
        try:
            return kind.build(options)
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
