"""The router: a gating network over query embeddings mixed with the experts' self-assessment.

For a query, ``expertise = gate_weight × gate + (1 − gate_weight) × can_handle``, where ``gate`` is
the probability the fitted gate (an MLP over sentence embeddings, by default) gives each expert.
Experts at ``max_load`` are penalised; experts that cannot take the query's attachments are
excluded; hybrid rules, when one matches, restrict the candidates. The best ``top_k`` above
``min_confidence`` are chosen.

The gate is fitted from the experts' exemplars the first time it is needed and cached on disk under
a fingerprint of the encoder, the exemplars and the gate settings, so it is refitted exactly when
those change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
import structlog

from ..errors import ConfigError, NoCapableExpert
from ..experts.base import Expert
from ..types import ExpertScore, Query, Selection
from .encoder import BatchingEncoder, Encoder, bundled_encoder
from .gate import FitReport, Gate, GateConfig, fit_gate, gate_fingerprint, load_gate
from .rules import Rule, first_match

__all__ = ["Router", "RouterConfig", "gate_cache_dir"]

log = structlog.get_logger(__name__)

_ExemplarKey = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings (the YAML ``router:`` section).

    Attributes:
        top_k: most experts chosen per query.
        min_confidence: experts scoring below this are not chosen. If none reaches it, the
            ``fallback_expert`` is chosen (mode ``fallback``), or else the best one (mode
            ``low_confidence``), so that a query is never left unanswered.
        gate_weight: share of the gate in ``expertise`` (the rest is self-assessment).
        fallback_expert: the expert for queries nobody is confident about.
        overload_penalty: factor applied to an expert already at ``max_load``.
        assess_top: only the best ``assess_top`` experts by gate are asked ``can_handle`` (the
            others keep ``gate_weight × gate``), so routing cost stays flat with many experts.
        gate: how the gate is built and trained.
        cache_size: query embeddings kept in the LRU cache.
        batch_window_s: how long a query waits for others to share its encoder forward (0: one
            pass of the event loop; queries arriving while a forward runs share the next one).
        max_batch: most queries per encoder forward.
        gate_cache_dir: where fitted gates are cached (``None``: ``$MOE_AGENTS_CACHE_DIR`` or the
            user cache folder); ``""`` disables the cache.
    """

    top_k: int = 1
    min_confidence: float = 0.0
    gate_weight: float = 0.6
    fallback_expert: str | None = None
    overload_penalty: float = 0.5
    assess_top: int = 16
    gate: GateConfig = field(default_factory=GateConfig)
    cache_size: int = 1024
    batch_window_s: float = 0.0
    max_batch: int = 64
    gate_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"router.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.gate_weight <= 1.0:
            raise ConfigError(f"router.gate_weight must be in [0, 1], got {self.gate_weight}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"router.min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.assess_top < self.top_k:
            raise ConfigError(f"router.assess_top ({self.assess_top}) must be >= top_k ({self.top_k})")


def gate_cache_dir(config: RouterConfig | None = None) -> Path | None:
    """Where fitted gates are cached (``None`` when caching is disabled)."""
    configured = config.gate_cache_dir if config is not None else None
    if configured == "":
        return None
    if configured is not None:
        return Path(configured).expanduser()
    if env := os.environ.get("MOE_AGENTS_CACHE_DIR"):
        return Path(env).expanduser() / "gates"
    import platformdirs

    return Path(platformdirs.user_cache_dir("moe-agents")) / "gates"


class Router:
    """Chooses experts for a query and explains the choice in ``Selection.scores``.

    Args:
        config: top-k, thresholds, mixing weights and gate settings.
        encoder: embeds queries and exemplars (default: the bundled all-MiniLM-L6-v2).
        rules: hybrid rules checked before the gate.
        gate: a gate fitted beforehand (e.g. ``load_gate(path)``); by default one is fitted from
            the experts' exemplars on first use.
        exemplars: extra exemplars per expert name (e.g. from a JSONL file), added to each
            expert's own.
    """

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        encoder: Encoder | None = None,
        rules: Sequence[Rule] = (),
        gate: Gate | None = None,
        exemplars: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self.encoder = encoder if encoder is not None else bundled_encoder()
        self.embedder = BatchingEncoder(
            self.encoder,
            max_batch=self.config.max_batch,
            window_s=self.config.batch_window_s,
            cache_size=self.config.cache_size,
        )
        self.rules = tuple(rules)
        self.extra_exemplars = {k: tuple(v) for k, v in (exemplars or {}).items()}
        self._fixed = gate is not None
        self._gate = gate
        self._gate_key: _ExemplarKey | None = None
        self._gate_lock = anyio.Lock()
        self.report: FitReport | None = None
        """How the current gate was fitted (``None`` for a gate given or loaded from the cache)."""

    @property
    def gate(self) -> Gate | None:
        """The gate in use (``None`` until prepared, or when fewer than two experts have exemplars)."""
        return self._gate

    def exemplars(self, experts: Sequence[Expert]) -> dict[str, tuple[str, ...]]:
        """Every expert's exemplars (its own, then the extra ones), for experts that have any."""
        out = {e.name: tuple(e.exemplars) + self.extra_exemplars.get(e.name, ()) for e in experts}
        unknown = sorted(set(self.extra_exemplars) - set(out))
        if unknown:
            raise ConfigError(f"exemplars given for unknown experts {unknown}; experts: {sorted(out)}")
        return {name: texts for name, texts in out.items() if texts}

    def _exemplar_key(self, experts: Sequence[Expert]) -> _ExemplarKey:
        """What the gate was fitted from: the experts' exemplars and the router's extra ones."""
        own = tuple((e.name, tuple(e.exemplars)) for e in experts)
        return own + tuple(sorted(self.extra_exemplars.items()))

    async def prepare(self, experts: Sequence[Expert]) -> None:
        """Makes the gate ready for ``experts``: checks a given gate, or loads or fits one."""
        key = self._exemplar_key(experts)
        if key == self._gate_key:
            return
        async with self._gate_lock:
            if key == self._gate_key:
                return
            exemplars = self.exemplars(experts)
            if self._fixed:
                assert self._gate is not None
                _check_experts(self._gate.experts, exemplars)
            elif len(exemplars) >= 2:
                self._gate = await self._load_or_fit(exemplars, progress=None, force=False)
            else:
                self._gate = None  # nothing to learn from: the gate is uniform
            self._gate_key = key

    async def fit(
        self, experts: Sequence[Expert], *, progress: Callable[[int, int], None] | None = None
    ) -> FitReport:
        """Fits the gate on the experts' exemplars now (ignoring the cache) and caches it."""
        exemplars = self.exemplars(experts)
        async with self._gate_lock:
            self._gate = await self._load_or_fit(exemplars, progress=progress, force=True)
            self._fixed = False
            self._gate_key = self._exemplar_key(experts)
        assert self.report is not None
        return self.report

    async def _load_or_fit(
        self,
        exemplars: Mapping[str, Sequence[str]],
        *,
        progress: Callable[[int, int], None] | None,
        force: bool,
    ) -> Gate:
        cfg = self.config.gate
        fingerprint = gate_fingerprint(self.encoder.name, exemplars, cfg)
        folder = gate_cache_dir(self.config)
        path = folder / f"{cfg.kind}-{fingerprint[:20]}.safetensors" if folder is not None else None
        if path is not None and path.exists() and not force:
            try:
                gate = await anyio.to_thread.run_sync(
                    lambda: load_gate(path, experts=list(exemplars), encoder=self.encoder.name)
                )
            except ConfigError as exc:
                log.warning("gate.cache_unusable", path=str(path), error=str(exc))
            else:
                log.info("gate.loaded", path=str(path), kind=cfg.kind)
                self.report = gate.report
                return gate
        start = time.perf_counter()
        texts = [t for ts in exemplars.values() for t in ts]
        labels = [name for name, ts in exemplars.items() for _ in ts]
        vectors = await self.embedder.embed_many(texts)
        gate, report = await anyio.to_thread.run_sync(
            lambda: fit_gate(vectors, labels, list(exemplars), cfg, progress=progress)
        )
        self.report = report
        log.info(
            "gate.fitted",
            kind=cfg.kind,
            experts=list(exemplars),
            exemplars=len(texts),
            val_accuracy=report.val_accuracy,
            s=round(time.perf_counter() - start, 3),
        )
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                gate.save(path, encoder=self.encoder.name, fingerprint=fingerprint)
            except OSError as exc:
                log.warning("gate.cache_unwritable", path=str(path), error=str(exc))
        return gate

    async def embed(self, text: str) -> np.ndarray:
        """The query's embedding (micro-batched with concurrent queries; LRU-cached)."""
        return await self.embedder.embed(text)

    async def route(self, query: Query, experts: Sequence[Expert]) -> Selection:
        """Scores the experts for ``query`` and returns the top-k as a ``Selection``.

        Raises:
            NoCapableExpert: no expert accepts the query's attachments.
        """
        start = time.perf_counter()
        cfg = self.config
        await self.prepare(experts)
        scores: dict[str, ExpertScore] = {}
        candidates = [e for e in experts if e.accepts(query)]
        for e in experts:
            if not e.accepts(query):
                missing = sorted(query.modalities - e.modalities - {"file"})
                note = f"does not accept {missing}" if missing else "takes only queries with images or audio"
                scores[e.name] = ExpertScore(note=note)
        if not candidates:
            raise NoCapableExpert(
                f"no expert accepts attachments of kind {sorted(query.modalities)}; "
                f"experts: {[e.name for e in experts]}"
            )
        mode = "router"
        rule = first_match(self.rules, query.text)
        if rule is not None:
            ruled = [e for e in candidates if e.name in rule.experts]
            if ruled:
                for e in candidates:
                    if e.name not in rule.experts:
                        scores[e.name] = ExpertScore(note=f"rule {rule.label!r} sends this query elsewhere")
                candidates, mode = ruled, f"rule:{rule.label}"

        gate = await self._gate_probs(query, candidates)
        assess_order = np.argsort(-gate, kind="stable")[: cfg.assess_top]
        assessed: dict[int, float] = {}

        async def assess(i: int) -> None:
            assessed[i] = min(max(float(await candidates[i].can_handle(query)), 0.0), 1.0)

        async with anyio.create_task_group() as tg:
            for i in assess_order:
                tg.start_soon(assess, int(i))

        ranked: list[tuple[str, float]] = []
        for i, expert in enumerate(candidates):
            self_assessment = assessed.get(i)
            expertise = cfg.gate_weight * gate[i] + (1.0 - cfg.gate_weight) * (self_assessment or 0.0)
            overloaded = expert.current_load >= expert.max_load
            permission = expertise * (cfg.overload_penalty if overloaded else 1.0)
            scores[expert.name] = ExpertScore(
                gate=float(gate[i]),
                self_assessment=self_assessment,
                load=expert.current_load / expert.max_load,
                expertise=float(expertise),
                permission=float(permission),
                note="at max_load" if overloaded else None,
            )
            ranked.append((expert.name, float(permission)))

        ranked.sort(key=lambda p: p[1], reverse=True)
        chosen = [p for p in ranked[: cfg.top_k] if p[1] >= cfg.min_confidence]
        if not chosen:
            fallback = next((p for p in ranked if p[0] == cfg.fallback_expert), None)
            chosen, mode = ([fallback], "fallback") if fallback else (ranked[:1], "low_confidence")
        selection = Selection.from_scores(chosen, mode=mode, scores=scores)
        log.info(
            "route.selected",
            experts=selection.experts,
            weights=[round(w, 3) for w in selection.weights],
            mode=mode,
            ms=round((time.perf_counter() - start) * 1000, 2),
        )
        return selection

    async def _gate_probs(self, query: Query, candidates: Sequence[Expert]) -> np.ndarray:
        """The gate's probabilities over ``candidates``, renormalised (uniform when there is no gate
        or it gives them no mass); experts the gate does not know get 0."""
        gate = self._gate
        if gate is None:
            return np.full(len(candidates), 1.0 / len(candidates))
        vector = await self.embed(query.text)
        probs = gate.predict_proba(vector[None, :])[0]  # (E,)
        column = {name: i for i, name in enumerate(gate.experts)}
        p = np.array([probs[column[e.name]] if e.name in column else 0.0 for e in candidates])
        total = p.sum()
        return p / total if total > 0 else np.full(len(candidates), 1.0 / len(candidates))


def _check_experts(gate_experts: Sequence[str], exemplars: Mapping[str, Sequence[str]]) -> None:
    missing, extra = sorted(set(exemplars) - set(gate_experts)), sorted(set(gate_experts) - set(exemplars))
    if missing or extra:
        raise ConfigError(
            f"the gate was fitted for other experts: missing {missing}, extra {extra}; refit it "
            "with `moe-agents fit`"
        )
