"""The first router: exemplar-centroid gate mixed with the experts' self-assessment.

For a query, ``expertise = gate_weight × gate + (1 − gate_weight) × can_handle``, where ``gate`` is
a softmax over the cosine similarities between the query's embedding and each expert's exemplar
centroid. Experts at ``max_load`` are penalised; experts that cannot take the query's attachments
are excluded. The best ``top_k`` above ``min_confidence`` are chosen.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import numpy as np
import structlog

from ..errors import ConfigError, NoCapableExpert
from ..experts.base import Expert
from ..types import ExpertScore, Query, Selection
from .encoder import Encoder, bundled_encoder

__all__ = ["Router", "RouterConfig"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings (the YAML ``router:`` section).

    Attributes:
        top_k: most experts chosen per query.
        min_confidence: experts scoring below this are not chosen, except that the best one is
            always chosen (mode ``low_confidence``) so that a query is never left unanswered.
        gate_weight: share of the gate in ``expertise`` (the rest is self-assessment).
        temperature: softmax temperature over cosine similarities.
        overload_penalty: factor applied to an expert already at ``max_load``.
        cache_size: query embeddings kept in an LRU cache.
    """

    top_k: int = 1
    min_confidence: float = 0.0
    gate_weight: float = 0.6
    temperature: float = 0.2
    overload_penalty: float = 0.5
    cache_size: int = 1024

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"router.top_k must be >= 1, got {self.top_k}")
        if not 0.0 <= self.gate_weight <= 1.0:
            raise ConfigError(f"router.gate_weight must be in [0, 1], got {self.gate_weight}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ConfigError(f"router.min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.temperature <= 0:
            raise ConfigError(f"router.temperature must be > 0, got {self.temperature}")


class Router:
    """Chooses experts for a query and explains the choice in ``Selection.scores``.

    Args:
        config: top-k, thresholds and mixing weights.
        encoder: embeds queries and exemplars (default: the bundled all-MiniLM-L6-v2).
    """

    def __init__(self, config: RouterConfig | None = None, *, encoder: Encoder | None = None) -> None:
        self.config = config or RouterConfig()
        self.encoder = encoder if encoder is not None else bundled_encoder()
        self._centroids: dict[tuple[str, tuple[str, ...]], np.ndarray | None] = {}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    async def prepare(self, experts: Sequence[Expert]) -> None:
        """Embeds the exemplars of ``experts`` whose centroid is not known yet."""
        missing = [e for e in experts if (e.name, tuple(e.exemplars)) not in self._centroids]
        texts = [t for e in missing for t in e.exemplars]
        vectors = await anyio.to_thread.run_sync(self.encoder.encode, texts) if texts else None
        offset = 0
        for expert in missing:
            n = len(expert.exemplars)
            centroid = None
            if n and vectors is not None:
                mean = vectors[offset : offset + n].mean(axis=0)
                centroid = mean / max(float(np.linalg.norm(mean)), 1e-12)
            self._centroids[(expert.name, tuple(expert.exemplars))] = centroid
            offset += n

    async def embed(self, text: str) -> np.ndarray:
        """The query's embedding, from the LRU cache when seen recently."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        vector = (await anyio.to_thread.run_sync(self.encoder.encode, [text]))[0]
        self._cache[text] = vector
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return vector

    async def route(self, query: Query, experts: Sequence[Expert]) -> Selection:
        """Scores every expert for ``query`` and returns the top-k as a ``Selection``.

        Raises:
            NoCapableExpert: no expert accepts the query's attachments.
        """
        start = time.perf_counter()
        cfg = self.config
        candidates = [e for e in experts if e.accepts(query)]
        excluded = {
            e.name: ExpertScore(note=f"does not accept {sorted(query.modalities - e.modalities)}")
            for e in experts
            if not e.accepts(query)
        }
        if not candidates:
            raise NoCapableExpert(
                f"no expert accepts attachments of kind {sorted(query.modalities)}; "
                f"experts: {[e.name for e in experts]}"
            )
        await self.prepare(candidates)
        gate = await self._gate(query, candidates)
        assessed = np.zeros(len(candidates))

        async def assess(i: int, expert: Expert) -> None:
            assessed[i] = min(max(float(await expert.can_handle(query)), 0.0), 1.0)

        async with anyio.create_task_group() as tg:
            for i, expert in enumerate(candidates):
                tg.start_soon(assess, i, expert)

        scores: dict[str, ExpertScore] = dict(excluded)
        ranked: list[tuple[str, float]] = []
        for i, expert in enumerate(candidates):
            expertise = cfg.gate_weight * gate[i] + (1.0 - cfg.gate_weight) * assessed[i]
            load = expert.current_load / expert.max_load
            overloaded = expert.current_load >= expert.max_load
            permission = expertise * (cfg.overload_penalty if overloaded else 1.0)
            scores[expert.name] = ExpertScore(
                gate=float(gate[i]),
                self_assessment=float(assessed[i]),
                load=load,
                expertise=float(expertise),
                permission=float(permission),
                note="at max_load" if overloaded else None,
            )
            ranked.append((expert.name, float(permission)))

        ranked.sort(key=lambda p: p[1], reverse=True)
        chosen = [p for p in ranked[: cfg.top_k] if p[1] >= cfg.min_confidence]
        mode = "router"
        if not chosen:
            chosen, mode = ranked[:1], "low_confidence"
        selection = Selection.from_scores(chosen, mode=mode, scores=scores)
        log.info(
            "route.selected",
            experts=selection.experts,
            weights=[round(w, 3) for w in selection.weights],
            mode=mode,
            ms=round((time.perf_counter() - start) * 1000, 2),
        )
        return selection

    async def _gate(self, query: Query, candidates: Sequence[Expert]) -> np.ndarray:
        """Softmax over cosine similarities to each candidate's exemplar centroid."""
        centroids = [self._centroids[(e.name, tuple(e.exemplars))] for e in candidates]
        if all(c is None for c in centroids):
            return np.full(len(candidates), 1.0 / len(candidates))
        q = await self.embed(query.text)
        sims = np.array([float(q @ c) if c is not None else 0.0 for c in centroids])
        z = (sims - sims.max()) / self.config.temperature
        p = np.exp(z)
        return p / p.sum()
