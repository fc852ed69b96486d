"""The router: a gating network over query embeddings mixed with the experts' self-assessment,
trust, cost and residency.

For a query, ``expertise = gate_weight × gate + (1 − gate_weight) × can_handle``, where ``gate`` is
the probability the fitted gate (an MLP over sentence embeddings, by default) gives each expert.
Experts at ``max_load`` are penalised; experts that cannot take the query's attachments are
excluded; hybrid rules, when one matches, restrict the candidates. The choice itself is made by
the permission function (``moe_agents.routing.permission.select``): trust-first once trust is
established in the query's context, ``cheapness`` from each expert's price and swap cost, the
hysteresis bonus for resident models; the best ``top_k`` above ``min_confidence`` are chosen.

The gate is fitted from the experts' exemplars the first time it is needed and cached on disk under
a fingerprint of the encoder, the exemplars and the gate settings, so it is refitted exactly when
those change. With ``tune`` on (or ``auto``), the encoder itself is first fine-tuned on the
exemplars (``moe_agents.routing.tuning``, cached as an HF folder beside the gates); ``auto`` and an
unset ``gate_weight`` are settled by cross-validation on the exemplars (``routing.crossval``),
whose result is kept in the gate's ``FitReport.cv``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import anyio
import numpy as np

from ..bounds import Ge, Unit, check_bounds
from ..errors import BackendUnavailable, ConfigError, NoCapableExpert
from ..logging import get_logger
from ..resources import cache_folder
from ..types import ExpertScore, Query, Selection
from .context import ContextConfig, KMeansContexts, gate_context
from .crossval import CVConfig, choose, out_of_fold, stratified_folds
from .encoder import BatchingEncoder, Encoder, SentenceEncoder
from .gates import FitReport, Gate, GateConfig, fit_gate, gate_fingerprint, load_gate
from .gates.base import SavedGate
from .momentum import Momentum, MomentumConfig
from .onnx_encoder import EncoderRuntime, local_encoder
from .permission import Candidates, Preset, SelectConfig, select
from .rules import Rule, first_match
from .tuning import TUNED_MARKER, TuningConfig, tuned_embeddings, tuned_encoder_folder

if TYPE_CHECKING:
    from ..experts.base import Expert
    from ..residency import Residency
    from .trust import TrustStore

__all__ = ["DEFAULT_GATE_WEIGHT", "Router", "RouterConfig", "gate_cache_dir"]

DEFAULT_GATE_WEIGHT = 0.6
"""The gate's share when ``gate_weight`` is not set and nothing was cross-validated."""

log = get_logger(__name__)

_ExemplarKey = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings (the YAML ``router:`` section).

    Attributes:
        top_k: most experts chosen per query.
        min_confidence: experts scoring below this are not chosen. If none reaches it, the
            ``fallback_expert`` is chosen (mode ``fallback``), or else the best one (mode
            ``low_confidence``), so that a query is never left unanswered.
        gate_weight: share of the gate in ``expertise`` (the rest is self-assessment); ``None``:
            chosen by cross-validation on the exemplars (``cv.gate_weights``).
        fallback_expert: the expert for queries nobody is confident about.
        overload_penalty: factor applied to an expert already at ``max_load``.
        assess_top: only the best ``assess_top`` experts by gate are asked ``can_handle`` (the
            others keep ``gate_weight × gate``), so routing cost stays flat with many experts.
        gate: how the gate is built and trained.
        tune: fine-tune the encoder on the exemplars before fitting the gate: ``on``, ``off``
            (the encoder as given), or ``auto`` (whichever cross-validation on the exemplars prefers).
        tuning: how the encoder is tuned (epochs, learning rate, seed, ...).
        cv: the cross-validation that settles ``tune: auto``, an unset ``gate_weight`` and the
            gate's temperature.
        cache_size: query embeddings kept in the LRU cache.
        batch_window_s: how long a query waits for others to share its encoder forward (0: one
            pass of the event loop; queries arriving while a forward runs share the next one).
        max_batch: most queries per encoder forward.
        gate_cache_dir: where fitted gates are cached (``None``: ``$MOE_AGENTS_CACHE_DIR`` or the
            user cache folder); ``""`` disables the cache.
        selection: trust-first ranking, exploration, low-trust fallback, hysteresis, cost weight.
        context: how queries are bucketed for trust.
        momentum: within a session, the previous turns' experts keep a bounded, fading bonus.
        seed: seeds exploration (``None``: fresh randomness).
        encoder_runtime: how the local encoder runs when none is given: ``onnx`` (int8 ONNX
            Runtime, exported once and cached; see ``OnnxEncoder``) or ``torch`` (transformers).
    """

    top_k: Annotated[int, Ge(1)] = 1
    min_confidence: Annotated[float, Unit] = 0.0
    gate_weight: Annotated[float, Unit] | None = DEFAULT_GATE_WEIGHT
    fallback_expert: str | None = None
    overload_penalty: Annotated[float, Unit] = 0.5
    assess_top: Annotated[int, Ge(1)] = 16
    gate: GateConfig = field(default_factory=GateConfig)
    tune: Literal["auto", "on", "off"] = "off"
    tuning: TuningConfig = field(default_factory=TuningConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    cache_size: Annotated[int, Ge(0)] = 1024
    batch_window_s: Annotated[float, Ge(0.0)] = 0.0
    max_batch: Annotated[int, Ge(1)] = 64
    gate_cache_dir: str | None = None
    selection: SelectConfig = field(default_factory=SelectConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    seed: int | None = None
    encoder_runtime: EncoderRuntime = "torch"

    def __post_init__(self) -> None:
        check_bounds(
            "router",
            self,
            {
                "assess_top": self.assess_top >= self.top_k,
                "encoder_runtime": self.encoder_runtime in get_args(EncoderRuntime),
            },
        )
        if self.tune not in ("auto", "on", "off"):
            raise ConfigError(f"router.tune must be one of auto, on, off; got {self.tune!r}")

    @property
    def cross_validates(self) -> bool:
        """Whether fitting runs cross-validation (``tune: auto`` or no fixed ``gate_weight``)."""
        return self.tune == "auto" or self.gate_weight is None


def gate_cache_dir(config: RouterConfig | None = None) -> Path | None:
    """Where fitted gates are cached (``None`` when caching is disabled)."""
    configured = config.gate_cache_dir if config is not None else None
    if configured == "":
        return None
    if configured is not None:
        return Path(configured).expanduser()
    return cache_folder("gates")


class Router:
    """Chooses experts for a query and explains the choice in ``Selection.scores``.

    Args:
        config: top-k, thresholds, mixing weights and gate settings.
        encoder: embeds queries and exemplars (default: the bundled all-MiniLM-L6-v2 on
            ``config.encoder_runtime``).
        rules: hybrid rules checked before the gate.
        gate: a gate fitted beforehand (e.g. ``load_gate(path)``); by default one is fitted from
            the experts' exemplars on first use.
        exemplars: extra exemplars per expert name (e.g. from a JSONL file), added to each
            expert's own.
        trust: the trust store; with it, trust ranks experts once it is established per context,
            and ``Selection.context`` says which context feedback updates.
        residency: byte-budgeted model residency; resident experts get the hysteresis bonus and
            others pay their swap time in ``cheapness``.
    """

    def __init__(
        self,
        config: RouterConfig | None = None,
        *,
        encoder: Encoder | None = None,
        rules: Sequence[Rule] = (),
        gate: Gate | None = None,
        exemplars: Mapping[str, Sequence[str]] | None = None,
        trust: TrustStore | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        self.trust = trust
        self.residency = residency
        self.clusters: KMeansContexts | None = None
        """The k-means contexts (``context.kind: cluster``), fitted from the exemplars in ``prepare``."""
        self._rng = np.random.default_rng(self.config.seed)
        self.momentum = Momentum(self.config.momentum)
        """Per-session routing momentum (``router.momentum``)."""
        self.encoder = encoder if encoder is not None else local_encoder(runtime=self.config.encoder_runtime)
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

    _tuned: Encoder | None = None  # the tuned encoder in use, if any (set by _use_encoder)

    @property
    def active_encoder(self) -> Encoder:
        """The encoder queries are embedded with: the tuned one when the gate was fitted on it,
        else ``encoder``."""
        return self._tuned if self._tuned is not None else self.encoder

    @property
    def gate_weight(self) -> float:
        """The gate's share in ``expertise``: ``config.gate_weight`` when set, else the one
        cross-validation chose for the current gate (``DEFAULT_GATE_WEIGHT`` without one)."""
        if self.config.gate_weight is not None:
            return self.config.gate_weight
        report = self._gate.report if self._gate is not None else None
        if report is not None and report.cv is not None:
            return float(report.cv["gate_weight"])
        return DEFAULT_GATE_WEIGHT

    def tuned_encoder_dir(self) -> Path | None:
        """Where tuned encoders are cached (``encoders/`` in the gate cache; ``None`` without one)."""
        folder = gate_cache_dir(self.config)
        return None if folder is None else folder / "encoders"

    def open_encoder(self, folder: Path) -> Encoder:
        """The encoder for a tuned HF model folder (the one place that decides how it is run)."""
        return SentenceEncoder(folder)

    def _use_encoder(self, tuned: Encoder | None) -> None:
        """Embeds queries with ``tuned`` from now on (``None``: with ``encoder``)."""
        if tuned is self._tuned:
            return
        self._tuned = tuned
        self.embedder = BatchingEncoder(
            self.active_encoder,
            max_batch=self.config.max_batch,
            window_s=self.config.batch_window_s,
            cache_size=self.config.cache_size,
        )

    def _encoder_of(self, gate: Gate, *, near: Path | None = None) -> Encoder | None:
        """The tuned encoder ``gate`` was fitted on (``None``: it was fitted on ``encoder``), found
        in ``near`` (the gate's folder) or the tuned-encoder cache.

        Raises:
            ConfigError: the gate names another encoder, or its tuned folder is nowhere to be found.
        """
        name = gate.encoder
        if name is None or name == self.encoder.name:
            return None
        places = [p for p in (near, self.tuned_encoder_dir()) if p is not None]
        for place in places:
            folder = place / name
            if (folder / TUNED_MARKER).is_file():
                return self.open_encoder(folder)
        if "-tuned-" in name:
            raise ConfigError(
                f"the gate was fitted on the tuned encoder {name!r}, which is not in "
                f"{[str(p) for p in places]}; refit it with `moe-agents fit`"
            )
        raise ConfigError(f"the gate was fitted on {name!r} embeddings, not {self.encoder.name!r}")

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
                near = getattr(self._gate, "path", None)
                self._use_encoder(
                    self._encoder_of(self._gate, near=None if near is None else Path(near).parent)
                )
            elif len(exemplars) >= 2:
                self._gate = await self._load_or_fit(experts, exemplars, progress=None, force=False)
            else:
                self._gate = None  # nothing to learn from: the gate is uniform
                self._use_encoder(None)
            if self.trust is not None and self.config.context.kind == "cluster" and self.clusters is None:
                texts = [t for ts in exemplars.values() for t in ts]
                if texts:
                    vectors = await self.embedder.embed_many(texts)
                    self.clusters = KMeansContexts.fit(vectors, self.config.context)
            self._gate_key = key

    async def fit(
        self, experts: Sequence[Expert], *, progress: Callable[[int, int], None] | None = None
    ) -> FitReport:
        """Fits the gate on the experts' exemplars now (ignoring the cache, tuning the encoder
        again when it is tuned) and caches it."""
        exemplars = self.exemplars(experts)
        async with self._gate_lock:
            self._gate = await self._load_or_fit(experts, exemplars, progress=progress, force=True)
            self._fixed = False
            self._gate_key = self._exemplar_key(experts)
        assert self.report is not None
        return self.report

    def _selection_key(self) -> dict[str, Any] | None:
        """What besides the encoder, exemplars and gate settings decides the fitted gate."""
        cfg = self.config
        if not cfg.cross_validates and cfg.tune == "off":
            return None  # today's gate: no tuning, no cross-validation
        return {
            "tune": cfg.tune,
            "tuning": None if cfg.tune == "off" else asdict(cfg.tuning),
            "cv": asdict(cfg.cv) if cfg.cross_validates else None,
            "gate_weight": cfg.gate_weight,
        }

    async def _load_or_fit(
        self,
        experts: Sequence[Expert],
        exemplars: Mapping[str, Sequence[str]],
        *,
        progress: Callable[[int, int], None] | None,
        force: bool,
    ) -> Gate:
        cfg = self.config
        fingerprint = gate_fingerprint(
            self.encoder.name, exemplars, cfg.gate, selection=self._selection_key()
        )
        folder = gate_cache_dir(cfg)
        path = folder / f"{cfg.gate.kind}-{fingerprint[:20]}.safetensors" if folder is not None else None
        if path is not None and path.exists() and not force:
            try:
                gate = await anyio.to_thread.run_sync(lambda: load_gate(path, experts=list(exemplars)))
                tuned = await anyio.to_thread.run_sync(lambda: self._encoder_of(gate))
            except ConfigError as exc:
                log.warning("gate.cache_unusable", path=str(path), error=str(exc))
            else:
                log.info("gate.loaded", path=str(path), kind=cfg.gate.kind, encoder=gate.encoder)
                self._use_encoder(tuned)
                self.report = gate.report
                return gate
        start = time.perf_counter()
        texts = [t for ts in exemplars.values() for t in ts]
        labels = [name for name, ts in exemplars.items() for _ in ts]
        assessments = None
        if cfg.cross_validates:
            assessments = await _assess(experts, list(exemplars), texts)
        gate, report, tuned = await anyio.to_thread.run_sync(
            lambda: self._fit_blocking(exemplars, texts, labels, assessments, progress, force)
        )
        self.report = report
        log.info(
            "gate.fitted",
            kind=cfg.gate.kind,
            experts=list(exemplars),
            exemplars=len(texts),
            val_accuracy=report.val_accuracy,
            encoder=gate.encoder,
            cv=None
            if report.cv is None
            else {k: report.cv[k] for k in ("encoder", "gate_weight", "accuracy")},
            s=round(time.perf_counter() - start, 3),
        )
        self._use_encoder(tuned)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                gate.save(path, encoder=self.active_encoder.name, fingerprint=fingerprint)
            except OSError as exc:
                log.warning("gate.cache_unwritable", path=str(path), error=str(exc))
        else:
            gate.encoder = self.active_encoder.name
        return gate

    def _fit_blocking(
        self,
        exemplars: Mapping[str, Sequence[str]],
        texts: list[str],
        labels: list[str],
        assessments: tuple[np.ndarray, np.ndarray] | None,
        progress: Callable[[int, int], None] | None,
        force: bool,
    ) -> tuple[Gate, FitReport, Encoder | None]:
        """Cross-validates (when configured), tunes the encoder (when chosen) and fits the gate.
        Blocks: runs in a worker thread."""
        cfg, base = self.config, self.encoder
        names = list(exemplars)
        y = np.array([names.index(label) for label in labels])
        tunable = isinstance(base, SentenceEncoder)
        if cfg.tune == "on" and not tunable:
            raise ConfigError(f"router.tune: on needs a transformers encoder folder, not {base.name!r}")
        try_tuned = tunable and cfg.tune != "off"
        x_base = base.encode(texts) if cfg.tune != "on" else None
        cv = None
        use_tuned = try_tuned
        n_folds = min(cfg.cv.folds, int(np.bincount(y).min()))
        if assessments is not None and n_folds < 2:
            log.warning("gate.cv_skipped", reason="an expert has fewer than two exemplars")
        if assessments is not None and n_folds >= 2:
            sa, allowed = assessments
            folds = stratified_folds(y, n_folds, cfg.cv.seed)
            oof: dict[tuple[str, str], np.ndarray] = {}
            if x_base is not None:
                for g, p in out_of_fold(
                    x_base, y, names, cfg.gate, folds, kinds=cfg.cv.kinds, ensemble=cfg.cv.ensemble
                ).items():
                    oof[("base", g)] = p
            if try_tuned:
                assert isinstance(base, SentenceEncoder)

                def fold_embeddings(train: np.ndarray) -> np.ndarray:
                    return tuned_embeddings(base.path, texts, y, train, cfg.tuning, progress=progress)

                for g, p in out_of_fold(
                    fold_embeddings, y, names, cfg.gate, folds, kinds=cfg.cv.kinds, ensemble=cfg.cv.ensemble
                ).items():
                    oof[("tuned", g)] = p
            weights = None if cfg.gate_weight is None else (cfg.gate_weight,)
            kinds = (cfg.gate.kind, *cfg.cv.kinds)
            cv = replace(
                choose(oof, sa, y, allowed, cfg.cv, gate_weights=weights, selectable=kinds), folds=n_folds
            )
            use_tuned = cv.encoder == "tuned"
        tuned: Encoder | None = None
        if use_tuned:
            assert isinstance(base, SentenceEncoder)
            folder = tuned_encoder_folder(
                base.path,
                base.name,
                exemplars,
                cfg.tuning,
                self.tuned_encoder_dir(),
                progress=progress,
                force=force,
            )
            tuned = self.open_encoder(folder)
            x = tuned.encode(texts)
        else:
            assert x_base is not None
            x = x_base
        gate_config = cfg.gate if cv is None else replace(cfg.gate, kind=cv.gate)  # type: ignore[arg-type]
        gate, report = fit_gate(x, labels, names, gate_config, progress=progress)
        if cv is not None and isinstance(gate, SavedGate):
            gate.temperature *= cv.temperature_scale
            report = replace(report, temperature=gate.temperature, cv=cv.to_dict())
            gate.report = report
        return gate, report, tuned

    async def embed(self, text: str) -> np.ndarray:
        """The query's embedding (micro-batched with concurrent queries; LRU-cached)."""
        return await self.embedder.embed(text)

    async def route(
        self,
        query: Query,
        experts: Sequence[Expert],
        *,
        preset: Preset | str = Preset.WAKE,
        allowed: Callable[[Expert], bool] | None = None,
    ) -> Selection:
        """Scores the experts for ``query`` and returns the top-k as a ``Selection``.

        Args:
            query: the query.
            experts: the candidates.
            preset: the metabolic state for this call (``wake``, ``focus``, ``rest``, ``crisis``).
            allowed: when given, only experts it accepts may be chosen (e.g. cheap ones once a
                session's budget is spent); if it accepts none, all may be.

        Raises:
            NoCapableExpert: no expert accepts the query's attachments.
            BackendUnavailable: every expert that accepts them is cooling down (``recovers_at``
                says when the first one may be tried again).
        """
        start = time.perf_counter()
        cfg = self.config
        await self.prepare(experts)
        scores: dict[str, ExpertScore] = {}
        candidates = []
        for e in experts:
            if e.accepts(query):
                candidates.append(e)
                continue
            missing = sorted(query.modalities - e.modalities - {"file"})
            note = f"does not accept {missing}" if missing else "takes only queries with images or audio"
            scores[e.name] = ExpertScore(note=note)
        if not candidates:
            raise NoCapableExpert(
                f"no expert accepts attachments of kind {sorted(query.modalities)}; "
                f"experts: {[e.name for e in experts]}"
            )
        cooling = {e.name: e.recovers_at() for e in candidates}
        if all(t is not None for t in cooling.values()):
            recovers_at = min(t for t in cooling.values() if t is not None)
            raise BackendUnavailable(
                f"every expert that can take the query is cooling down: {sorted(cooling)}",
                recovers_at=recovers_at,
            )
        now = time.monotonic()
        for name, t in cooling.items():
            if t is not None:
                scores[name] = ExpertScore(
                    note=f"cooling down: every backend failed repeatedly (retry in {t - now:.1f} s)"
                )
        candidates = [e for e in candidates if cooling[e.name] is None]
        mode = "router"
        rule = first_match(self.rules, query.text)
        if rule is not None:
            ruled = [e for e in candidates if e.name in rule.experts]
            if ruled:
                for e in candidates:
                    if e.name not in rule.experts:
                        scores[e.name] = ExpertScore(note=f"rule {rule.label!r} sends this query elsewhere")
                candidates, mode = ruled, f"rule:{rule.label}"

        gate, context = await self._gate_probs(query, candidates)
        assess_order = np.argsort(-gate, kind="stable")[: cfg.assess_top]
        assessed: dict[int, float] = {}

        async def assess(i: int) -> None:
            assessed[i] = min(max(float(await candidates[i].can_handle(query)), 0.0), 1.0)

        if any(candidates[i].assessment_waits for i in assess_order):
            async with anyio.create_task_group() as tg:
                for i in assess_order:
                    tg.start_soon(assess, int(i))
        else:  # rule-based assessments never wait: a task each would cost more than they do
            for i in assess_order:
                await assess(int(i))

        names = [e.name for e in candidates]
        gate_weight = self.gate_weight
        expertise = np.empty(len(candidates))
        availability = np.ones(len(candidates))
        for i, expert in enumerate(candidates):
            self_assessment = assessed.get(i)
            expertise[i] = gate_weight * gate[i] + (1.0 - gate_weight) * (self_assessment or 0.0)
            overloaded = expert.current_load >= expert.max_load
            availability[i] = cfg.overload_penalty if overloaded else 1.0
            scores[expert.name] = ExpertScore(
                gate=float(gate[i]),
                self_assessment=self_assessment,
                load=expert.current_load / expert.max_load,
                note="at max_load" if overloaded else None,
            )
        trust = evidence = None
        if self.trust is not None and context is not None:
            trust, evidence = self.trust.lookup(names, context, backoff=cfg.selection.min_evidence)
        resident = swap_s = None
        if self.residency is not None:
            resident, swap_s = _residency_state(self.residency, candidates)
        store = self.trust
        selection = select(
            Candidates(
                names,
                expertise,
                trust=trust,
                evidence=evidence,
                price=np.array([e.price for e in candidates]),
                swap_s=swap_s,
                resident=resident,
                availability=availability,
                profiles=(lambda: store.profiles(names)[0]) if store is not None else None,
                base=scores,
                allowed=None if allowed is None else np.array([allowed(e) for e in candidates]),
            ),
            cfg.selection,
            k=cfg.top_k,
            min_confidence=cfg.min_confidence,
            preset=preset,
            rng=self._rng,
            context=context,
            fallback=cfg.fallback_expert,
        )
        # experts left out before ranking keep their note; a rule names the mode of a plain choice
        mode = mode if selection.mode == "router" else selection.mode
        selection = replace(selection, mode=mode, scores={**scores, **selection.scores})
        log.info(
            "route.selected",
            experts=selection.experts,
            weights=[round(w, 3) for w in selection.weights],
            mode=mode,
            ms=round((time.perf_counter() - start) * 1000, 2),
        )
        return selection

    async def _gate_probs(self, query: Query, candidates: Sequence[Expert]) -> tuple[np.ndarray, str | None]:
        """The gate's probabilities over ``candidates``, renormalised (uniform when there is no gate
        or it gives them no mass; experts the gate does not know get 0), and the query's trust
        context (``None`` without a trust store)."""
        gate, kind = self._gate, self.config.context.kind
        uniform = np.full(len(candidates), 1.0 / len(candidates))
        needs_vector = gate is not None or (self.trust is not None and self.clusters is not None)
        vector = await self.embed(query.text) if needs_vector else None
        context: str | None = None
        if self.trust is not None:
            context = "global"
            if kind == "cluster" and self.clusters is not None and vector is not None:
                context = self.clusters.assign(vector)
        if gate is None or vector is None:
            if self.trust is not None and kind == "gate":
                context = "global"  # no gate to take a label from
            return uniform, context
        probs = gate.predict_proba(vector[None, :])[0]  # (E,)
        if self.trust is not None and kind == "gate":
            context = gate_context(gate.experts, probs)
        probs = self.momentum.apply(query.session_id, gate.experts, probs)
        column = {name: i for i, name in enumerate(gate.experts)}
        p = np.array([probs[column[e.name]] if e.name in column else 0.0 for e in candidates])
        total = p.sum()
        return (p / total if total > 0 else uniform), context


async def _assess(
    experts: Sequence[Expert], names: Sequence[str], texts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Each expert's ``can_handle`` of each exemplar as a text-only query ``(N, E)``, in ``names``
    order, and whether it accepts it at all."""
    by_name = {e.name: e for e in experts}
    sa = np.zeros((len(texts), len(names)))
    allowed = np.zeros((len(texts), len(names)), dtype=bool)
    for i, text in enumerate(texts):
        query = Query(text)
        for j, name in enumerate(names):
            expert = by_name[name]
            allowed[i, j] = expert.accepts(query)
            if allowed[i, j]:
                sa[i, j] = min(max(float(await expert.can_handle(query)), 0.0), 1.0)
    return sa, allowed


def _residency_state(residency: Residency, experts: Sequence[Expert]) -> tuple[np.ndarray, np.ndarray]:
    """Per expert: resident (it has a loaded model, or none that residency manages) and the
    weighted seconds to load its cheapest model otherwise."""
    resident, swap_s = np.ones(len(experts), bool), np.zeros(len(experts))
    managed_names = set(residency.names)
    for i, expert in enumerate(experts):
        managed = [b.name for b in expert.backends if b.name in managed_names]
        if managed:
            resident[i] = bool(residency.resident(managed).any())
            swap_s[i] = float(residency.swap_cost(managed).min()) * residency.config.swap_cost_weight
    return resident, swap_s


def _check_experts(gate_experts: Sequence[str], exemplars: Mapping[str, Sequence[str]]) -> None:
    missing, extra = sorted(set(exemplars) - set(gate_experts)), sorted(set(gate_experts) - set(exemplars))
    if missing or extra:
        raise ConfigError(
            f"the gate was fitted for other experts: missing {missing}, extra {extra}; refit it "
            "with `moe-agents fit`"
        )
