"""The permission function: one selection rule for every scale (agents, models, token experts).

For E candidates::

    cheapness   = 1 / (1 + cost)                   cost: price × cost_weight + swap seconds
    persistence = 1 + hysteresis  if resident else 1
    permission  = expertise × cheapness × persistence

``expertise`` is the router's score, or the candidates' trust once it is established
(trust-first). ``permission`` works on numpy arrays and torch tensors alike; ``select`` turns
the scores into the ``Selection`` every selector returns.

Modes of a selection:
    ``router``: no trust is kept; the router's expertise ranks.
    ``router_explore``: trust is kept but fewer than two candidates have ``min_evidence``
        observations in this context, so the router ranks (and trust gathers evidence).
    ``trust_driven``: trust ranks.
    ``exploration``: with probability ``epsilon`` the choice is uniformly random.
    ``fallback``: a chosen candidate with trust below ``low_trust_threshold`` was replaced by the
        most similar candidate (by context profile) with higher trust.
    ``low_confidence``: nobody reached ``min_confidence``; the best one is chosen anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import numpy as np

from ..bounds import Ge, Unit, check_bounds
from ..types import ExpertScore, Selection

__all__ = ["Candidates", "Preset", "SelectConfig", "permission", "select"]

ArrayT = TypeVar("ArrayT")


def permission(
    expertise: ArrayT, cost: Any, resident: Any, hysteresis: float = 0.2
) -> tuple[Any, Any, ArrayT]:
    """``(cheapness, persistence, permission)`` for arrays (numpy or torch) over candidates.

    Args:
        expertise: how good each candidate is for the query (router score or trust), ≥ 0.
        cost: each candidate's cost of being used now (≥ 0; 0 for free and resident ones).
        resident: whether each candidate is already loaded (bool or 0/1).
        hysteresis: the bonus a resident candidate gets (the seed: +20 %).

    The seed's worked example: a resident model with expertise 0.8 (0.8 · 1.0 · 1.2 = 0.96) beats
    a non-resident one with expertise 0.9 that costs 9 s to load (0.9 · 0.1 · 1.0 = 0.09).
    """
    cheapness = 1.0 / (1.0 + cost)
    persistence = 1.0 + hysteresis * resident
    return cheapness, persistence, expertise * cheapness * persistence  # type: ignore[operator]


class Preset(StrEnum):
    """Metabolic states (the seed's names), selectable per call.

    ``wake``: top-k as configured. ``focus``: the single most trusted candidate (the router's best
    while trust is not established). ``rest`` and ``crisis``: the single cheapest capable
    candidate (``crisis`` also skips exploration).
    """

    WAKE = "wake"
    FOCUS = "focus"
    REST = "rest"
    CRISIS = "crisis"


@dataclass(frozen=True, slots=True)
class SelectConfig:
    """How ``select`` ranks (the YAML ``trust:`` section holds these, with the seed's defaults).

    Attributes:
        min_evidence: observations a candidate needs in a context before its trust counts.
        epsilon: probability of a uniformly random choice (exploration); 0 is deterministic.
        low_trust_threshold: a chosen candidate with established trust below this is replaced.
        hysteresis: bonus for resident candidates.
        cost_weight: multiplies each candidate's price in ``cost``.
        capable: in ``rest``/``crisis``, a candidate counts as capable when its expertise is at
            least this share of the best expertise.
    """

    min_evidence: Annotated[int, Ge(1)] = 3
    epsilon: Annotated[float, Unit] = 0.0
    low_trust_threshold: Annotated[float, Unit] = 0.3
    hysteresis: Annotated[float, Ge(0.0)] = 0.2
    cost_weight: Annotated[float, Ge(0.0)] = 1.0
    capable: Annotated[float, Unit] = 0.5

    def __post_init__(self) -> None:
        check_bounds("selection", self)


@dataclass(frozen=True, slots=True)
class Candidates:
    """What is known about E candidates for one selection; every array has shape ``(E,)``.

    Attributes:
        names: candidate ids.
        expertise: the router's score for each (≥ 0).
        trust: trust in this context (``None``: no trust is kept).
        evidence: observations behind each trust value.
        price: cost of one call in the pipeline's unit (multiplied by ``cost_weight``).
        swap_s: seconds to load a non-resident candidate (0 when resident or remote).
        resident: loaded now (gets the hysteresis bonus).
        availability: a factor in (0, 1] for load (e.g. 0.5 at ``max_load``).
        profiles: ``(E, C)`` trust of each candidate in each context, for the low-trust fallback
            (similar profiles = similar candidates), or a function returning it (called only when
            a fallback is needed); ``None`` disables the fallback.
        base: the score breakdown so far (gate, self-assessment, load, notes), by name.
        allowed: candidates that may be chosen (e.g. only cheap ones once a budget is spent);
            ``None``: all.
    """

    names: Sequence[str]
    expertise: np.ndarray
    trust: np.ndarray | None = None
    evidence: np.ndarray | None = None
    price: np.ndarray | None = None
    swap_s: np.ndarray | None = None
    resident: np.ndarray | None = None
    availability: np.ndarray | None = None
    profiles: np.ndarray | Callable[[], np.ndarray] | None = None
    base: Mapping[str, ExpertScore] | None = None
    allowed: np.ndarray | None = None


def select(
    c: Candidates,
    config: SelectConfig | None = None,
    *,
    k: int = 1,
    min_confidence: float = 0.0,
    preset: Preset | str = Preset.WAKE,
    rng: np.random.Generator | None = None,
    context: str | None = None,
    fallback: str | None = None,
) -> Selection:
    """Chooses among ``c`` by permission and returns a ``Selection`` with the full breakdown.

    Args:
        c: the candidates.
        config: ranking settings.
        k: most candidates chosen.
        min_confidence: candidates whose permission is below this are not chosen (if none
            reaches it, ``fallback`` or else the best one is chosen).
        preset: the metabolic state for this call.
        rng: randomness for exploration (needed only when ``epsilon > 0``).
        context: the context the trust values belong to (kept in ``Selection.context``).
        fallback: the candidate chosen when nobody reaches ``min_confidence``.
    """
    cfg = config or SelectConfig()
    preset = Preset(preset)
    n = len(c.names)
    if n == 0:
        raise ValueError("select() needs at least one candidate")
    expertise = np.asarray(c.expertise, dtype=np.float64)
    zeros, ones = np.zeros(n), np.ones(n)
    price = zeros if c.price is None else np.asarray(c.price, dtype=np.float64)
    swap_s = zeros if c.swap_s is None else np.asarray(c.swap_s, dtype=np.float64)
    resident = np.zeros(n, bool) if c.resident is None else np.asarray(c.resident, dtype=bool)
    availability = ones if c.availability is None else np.asarray(c.availability, dtype=np.float64)
    allowed = np.ones(n, bool) if c.allowed is None or not np.any(c.allowed) else np.asarray(c.allowed, bool)
    cost = price * cfg.cost_weight + swap_s

    mode = "router"
    rank_by = expertise
    trusted = np.zeros(n, bool)
    if c.trust is not None:
        evidence = zeros if c.evidence is None else np.asarray(c.evidence, dtype=np.float64)
        trusted = evidence >= cfg.min_evidence
        if int(trusted[allowed].sum()) >= 2:
            mode, rank_by = "trust_driven", np.asarray(c.trust, dtype=np.float64)
        else:
            mode = "router_explore"
    cheapness, persistence, perm = permission(rank_by, cost, resident, cfg.hysteresis)
    perm = perm * availability
    perm = np.where(allowed, perm, -np.inf)  # never chosen, still reported

    order = np.argsort(-perm, kind="stable")
    if preset in (Preset.FOCUS, Preset.REST, Preset.CRISIS):
        k = 1
    if preset is Preset.FOCUS:  # the most trusted (or, before trust, the best), whatever it costs
        order = np.argsort(-np.where(allowed, rank_by * availability, -np.inf), kind="stable")
    if preset in (Preset.REST, Preset.CRISIS):
        capable = allowed & (rank_by >= cfg.capable * rank_by[allowed].max())
        order = np.lexsort((-perm, price + swap_s, ~capable))  # capable first, then cheapest, then best
    k = min(k, int(allowed.sum()))
    chosen = [int(i) for i in order[:k]]
    notes: dict[int, str] = {}

    explore = cfg.epsilon > 0 and preset is not Preset.CRISIS
    gen = (rng if rng is not None else np.random.default_rng()) if explore else None
    if gen is not None and gen.random() < cfg.epsilon:
        chosen = [int(i) for i in gen.permutation(np.flatnonzero(allowed))[:k]]
        mode = "exploration"
    elif mode == "trust_driven" and c.profiles is not None and c.trust is not None:
        trust = np.asarray(c.trust, dtype=np.float64)
        profiles: np.ndarray | None = None
        for slot, i in enumerate(chosen):
            if not trusted[i] or trust[i] >= cfg.low_trust_threshold:
                continue
            better = allowed & (trust > trust[i]) & ~np.isin(np.arange(n), chosen)
            if not better.any():
                continue
            if profiles is None:
                profiles = np.asarray(c.profiles() if callable(c.profiles) else c.profiles, dtype=np.float64)
            sim = _cosine(profiles, i)
            j = int(np.flatnonzero(better)[np.argmax(sim[better])])
            chosen[slot] = j
            notes[j] = f"replaces {c.names[i]} (trust {trust[i]:.2f} < {cfg.low_trust_threshold})"
            mode = "fallback"

    if mode not in ("exploration", "fallback"):
        confident = [i for i in chosen if perm[i] >= min_confidence]
        if confident:
            chosen = confident
        elif fallback is not None and fallback in c.names:
            chosen, mode = [list(c.names).index(fallback)], "fallback"
            notes[chosen[0]] = "fallback expert: nobody reached min_confidence"
        else:
            chosen, mode = chosen[:1], "low_confidence"

    scores: dict[str, ExpertScore] = {}
    base = c.base or {}
    # plain floats: indexing numpy arrays element by element costs more than the arithmetic
    final = [max(p, 0.0) if math.isfinite(p) else 0.0 for p in perm.tolist()]
    trust_of = None if c.trust is None else np.asarray(c.trust, dtype=np.float64).tolist()
    n_cheap = np.broadcast_to(cheapness, (n,)).tolist()
    n_persist = np.broadcast_to(persistence, (n,)).tolist()
    allowed_l = allowed.tolist()
    for i, (name, exp) in enumerate(zip(c.names, expertise.tolist(), strict=True)):
        prior = base.get(name, _NO_SCORE)
        note = notes.get(i) or prior.note or (None if allowed_l[i] else "not allowed now (budget)")
        scores[name] = ExpertScore(
            gate=prior.gate,
            self_assessment=prior.self_assessment,
            load=prior.load,
            expertise=exp,
            trust=None if trust_of is None else trust_of[i],
            cheapness=n_cheap[i],
            persistence=n_persist[i],
            permission=final[i],
            note=note,
        )
    ranked = [(c.names[i], final[i]) for i in chosen]
    return Selection.from_scores(ranked, mode=mode, scores=scores, context=context)


_NO_SCORE = ExpertScore()


def _cosine(profiles: np.ndarray, i: int) -> np.ndarray:
    """Cosine similarity of every row of ``profiles`` to row ``i``."""
    norms = np.linalg.norm(profiles, axis=1) * np.linalg.norm(profiles[i]) + 1e-12
    return (profiles @ profiles[i]) / norms
