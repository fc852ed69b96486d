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
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
import numpy as np

from ..errors import BackendUnavailable, NoCapableExpert
from ..logging import get_logger
from ..types import ExpertScore, Query, Selection
from .context import KMeansContexts, gate_context
from .encoder import Encoder
from .gates import FitReport, Gate
from .momentum import Momentum
from .onnx_encoder import local_encoder
from .permission import Candidates, Preset, select
from .provision import GateProvision
from .rules import Rule, first_match
from .settings import DEFAULT_GATE_WEIGHT, RouterConfig, gate_cache_dir

if TYPE_CHECKING:
    from ..experts.base import Expert
    from ..residency import Residency
    from .trust import TrustStore

__all__ = ["DEFAULT_GATE_WEIGHT", "Router", "RouterConfig", "gate_cache_dir"]

log = get_logger(__name__)


class Router(GateProvision):
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
        self.embedder = self._new_embedder()
        self.rules = tuple(rules)
        self.extra_exemplars = {k: tuple(v) for k, v in (exemplars or {}).items()}
        self._fixed = gate is not None
        self._gate = gate
        self._gate_key = None
        self._gate_lock = anyio.Lock()
        self.report: FitReport | None = None
        """How the current gate was fitted (``None`` for a gate given or loaded from the cache)."""

    @property
    def gate(self) -> Gate | None:
        """The gate in use (``None`` until prepared, or when fewer than two experts have exemplars)."""
        return self._gate

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

