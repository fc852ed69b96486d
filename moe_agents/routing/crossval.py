"""Choosing the router's settings by stratified k-fold cross-validation on the exemplars alone.

Candidates are encoders (the base one, the one tuned on the exemplars) × gate kinds (the configured
one first, then the others in ``kinds``, then with ``ensemble`` the mean of the MLP, k-NN and
centroid gates, chosen only where it scores higher than all of them) × the gate's share against the
experts' self-assessment × a factor on the gate's temperature. For each encoder and gate, ``choose`` gets
out-of-fold probabilities (every exemplar scored by a gate, and where it applies an encoder, that
never saw it); it scores every combination by the share of held-out exemplars routed to their own
expert, exactly as the router mixes them (``w × gate + (1 − w) × can_handle``), and picks the best,
ties going to the earlier (simpler) candidate. Nothing from a test set is involved.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np

from ..bounds import Ge, check_bounds
from ..errors import ConfigError
from .gates import GateConfig, fit_gate
from .gates.base import GATE_KINDS, temper
from .gates.ensemble import MEMBERS

__all__ = ["CVChoice", "CVConfig", "choose", "out_of_fold", "stratified_folds", "temper"]


@dataclass(frozen=True, slots=True)
class CVConfig:
    """The cross-validation that picks the encoder, the gate weight and temperature (YAML ``router.cv:``).

    Attributes:
        folds: stratified folds over each expert's exemplars.
        gate_weights: candidate shares of the gate (used when ``router.gate_weight`` is not set).
        temperature_scales: candidate factors on the gate's (calibrated) temperature.
        kinds: gate kinds cross-validation may choose among (the configured ``gate.kind`` is always
            a candidate, and wins ties).
        ensemble: also score the ``ensemble`` gate (the mean of the MLP, k-NN and centroid gates),
            which is chosen where it wins; ties go to the simpler gates.
        seed: seeds the fold assignment.
    """

    folds: Annotated[int, Ge(2)] = 3
    gate_weights: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    temperature_scales: tuple[float, ...] = (1.0, 0.5, 2.0)
    kinds: tuple[str, ...] = ("mlp", "knn", "centroid")
    ensemble: bool = True
    seed: Annotated[int, Ge(0)] = 0

    def __post_init__(self) -> None:
        check_bounds("router.cv", self)
        object.__setattr__(self, "gate_weights", tuple(float(w) for w in self.gate_weights))
        object.__setattr__(self, "temperature_scales", tuple(float(s) for s in self.temperature_scales))
        if not self.gate_weights or any(not 0.0 <= w <= 1.0 for w in self.gate_weights):
            raise ConfigError(
                f"router.cv.gate_weights must be values in [0, 1], got {list(self.gate_weights)}"
            )
        object.__setattr__(self, "kinds", tuple(self.kinds))
        unknown = sorted(set(self.kinds) - set(GATE_KINDS))
        if unknown:
            known = ", ".join(GATE_KINDS)
            raise ConfigError(f"router.cv.kinds: unknown gate kinds {unknown} (known: {known})")
        if not self.temperature_scales or any(not s > 0 for s in self.temperature_scales):
            raise ConfigError(
                f"router.cv.temperature_scales must be positive numbers, got {list(self.temperature_scales)}"
            )


@dataclass(frozen=True, slots=True)
class CVChoice:
    """What cross-validation chose, and every candidate's score.

    Attributes:
        encoder: ``"base"`` or ``"tuned"``.
        gate: the gate kind (``mlp``, ``knn``, ``centroid`` or ``ensemble``).
        gate_weight: the gate's share in ``expertise``.
        temperature_scale: the factor applied to the gate's temperature.
        accuracy: the winner's out-of-fold accuracy.
        folds: the number of folds.
        n: held-out exemplars scored (those whose expert takes a text-only query).
        scores: ``{"<encoder>/<gate>/w=<w>/T×<s>": accuracy}`` for every candidate.
    """

    encoder: str
    gate: str
    gate_weight: float
    temperature_scale: float
    accuracy: float
    folds: int
    n: int
    scores: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (for ``FitReport.cv``)."""
        return {
            "encoder": self.encoder,
            "gate": self.gate,
            "gate_weight": self.gate_weight,
            "temperature_scale": self.temperature_scale,
            "accuracy": self.accuracy,
            "folds": self.folds,
            "n": self.n,
            "scores": dict(self.scores),
        }

    def best_per(self, part: int) -> dict[str, float]:
        """The best score for each value of one part of the candidate key (0: encoder, 1: gate,
        2: weight, 3: temperature), e.g. how tuned fared against base."""
        out: dict[str, float] = {}
        for key, acc in self.scores.items():
            value = key.split("/")[part]
            out[value] = max(out.get(value, 0.0), acc)
        return out


def stratified_folds(labels: Sequence[int] | np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold index per item: each label's items are shuffled (seeded) and dealt round-robin, so
    every fold holds about ``1/folds`` of each label.

    Raises:
        ConfigError: some label has fewer than two items (it cannot be both trained on and held out).
    """
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    start = 0
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        if len(idx) < 2:
            raise ConfigError(
                f"cross-validation needs at least two exemplars per expert; label {label} has one"
            )
        out[rng.permutation(idx)] = (np.arange(len(idx)) + start) % folds
        start += len(idx)  # deal each label from where the last left off, so folds stay even
    return out


def choose(
    oof: Mapping[tuple[str, str], np.ndarray],
    self_assessment: np.ndarray,
    labels: np.ndarray,
    allowed: np.ndarray,
    config: CVConfig,
    *,
    gate_weights: Sequence[float] | None = None,
    selectable: Sequence[str] | None = None,
) -> CVChoice:
    """Scores every candidate on out-of-fold probabilities and returns the best.

    Args:
        oof: ``{(encoder, gate): probabilities (N, E)}``, each exemplar scored out of fold; keys in
            order of preference (ties go to the earlier).
        self_assessment: the experts' ``can_handle`` per exemplar ``(N, E)``.
        labels: each exemplar's expert column ``(N,)``.
        allowed: which experts take each exemplar as a text-only query ``(N, E)``; exemplars whose
            own expert does not take it (media-only experts) are not scored.
        config: the grid.
        gate_weights: the weights to try (default ``config.gate_weights``; one value when fixed).
        selectable: the gates that may win (default: all); the others are scored and reported only.
    """
    if not oof:
        raise ConfigError("cross-validation needs at least one candidate")
    weights = tuple(gate_weights if gate_weights is not None else config.gate_weights)
    scored = allowed[np.arange(len(labels)), labels]
    y = labels[scored]
    sa, ok = self_assessment[scored], allowed[scored]
    scores: dict[str, float] = {}
    best: tuple[float, tuple[str, str, float, float]] | None = None
    for (enc, gate), probs in oof.items():
        for scale, w in itertools.product(config.temperature_scales, weights):
            p = temper(probs[scored], scale)
            mixed = np.where(ok, w * p + (1.0 - w) * sa, -np.inf)
            acc = float(np.mean(mixed.argmax(axis=1) == y)) if len(y) else 0.0
            scores[f"{enc}/{gate}/w={w:g}/T×{scale:g}"] = acc
            if selectable is not None and gate not in selectable:
                continue
            if best is None or acc > best[0] + 1e-12:
                best = (acc, (enc, gate, w, scale))
    if best is None:
        raise ConfigError(f"no selectable candidate among {sorted(set(g for _, g in oof))}")
    acc, (enc, gate, w, scale) = best
    return CVChoice(enc, gate, w, scale, acc, config.folds, int(scored.sum()), scores)


def out_of_fold(
    embeddings: np.ndarray | Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    experts: Sequence[str],
    gate: GateConfig,
    folds: np.ndarray,
    *,
    kinds: Sequence[str] = (),
    ensemble: bool,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Out-of-fold gate probabilities ``(N, E)`` per gate kind (the configured one first, then
    ``kinds``, then with ``ensemble`` the ``"ensemble"`` gate: the mean of the fold's MLP, k-NN and
    centroid probabilities, which is what an ``EnsembleGate`` fitted on that fold predicts). Blocks.

    Args:
        embeddings: every exemplar's embedding, or a function of a fold's training mask that
            returns them (for an encoder tuned on that fold's training exemplars only).
        labels: each exemplar's expert column.
        experts: the gate's columns.
        gate: the configured gate.
        kinds: other gate kinds to score.
        folds: each exemplar's fold (``stratified_folds``).
        ensemble: also compute the ensemble.
        progress: called with the fold index after each fold.
    """
    n_folds = int(folds.max()) + 1
    requested = list(dict.fromkeys((gate.kind, *kinds, *(("ensemble",) if ensemble else ()))))
    members = MEMBERS if "ensemble" in requested else ()
    wanted = [k for k in dict.fromkeys((*requested, *members)) if k != "ensemble"]
    probs = {kind: np.zeros((len(labels), len(experts))) for kind in wanted}
    names = list(experts)
    for f in range(n_folds):
        train, test = folds != f, folds == f
        x = embeddings(train) if callable(embeddings) else embeddings
        for kind in wanted:
            g, _ = fit_gate(x[train], [names[i] for i in labels[train]], names, replace(gate, kind=kind))
            probs[kind][test] = g.predict_proba(x[test])
        if progress is not None:
            progress(f)
    return {
        kind: np.mean([probs[k] for k in MEMBERS], axis=0) if kind == "ensemble" else probs[kind]
        for kind in requested
    }
