"""The ``ensemble`` gate: the mean of an MLP, a k-NN and a centroid gate fitted on the same
exemplars, chosen by cross-validation only where it beats each of them (``router.cv.ensemble``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import numpy as np

from .base import FitReport, GateConfig, SavedGate, temper
from .mlp import GatingNetwork, load_mlp
from .similarity import CentroidGate, KNNGate, load_centroid, load_knn

__all__ = ["MEMBERS", "EnsembleGate", "load_ensemble"]

MEMBERS: tuple[Literal["mlp", "knn", "centroid"], ...] = ("mlp", "knn", "centroid")
"""The member kinds, in the order their probabilities are averaged and their tensors are saved."""


class EnsembleGate(SavedGate):
    """``temper(mean of the members' probabilities, temperature)``: each member keeps its own
    temperature (the MLP's calibrated one; ``config.temperature`` for k-NN and centroid), and the
    ensemble's own ``temperature`` (1 when fitted) sharpens or flattens the mean, which is how
    cross-validation scales it.

    Args:
        members: the MLP, k-NN and centroid gates, fitted for the same experts.
        config: its settings (``kind="ensemble"``; the members' settings otherwise).
        temperature: the factor on the mean's temperature.
        report: how it was fitted.
    """

    kind = "ensemble"

    def __init__(
        self,
        members: Sequence[SavedGate],
        *,
        config: GateConfig,
        temperature: float = 1.0,
        report: FitReport | None = None,
    ) -> None:
        if [m.kind for m in members] != list(MEMBERS) or len({m.experts for m in members}) != 1:
            raise ValueError(f"an ensemble needs {MEMBERS} gates for the same experts")
        super().__init__(members[0].experts, config=config, temperature=temperature, report=report)
        self.members = tuple(members)

    @property
    def dim(self) -> int:
        return self.members[0].dim

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``: the members' mean, tempered."""
        x = self._queries(embeddings)
        mean = np.mean([m.predict_proba(x) for m in self.members], axis=0)  # (N, E)
        return temper(mean, self.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        out = {f"{m.kind}.{k}": v for m in self.members for k, v in m._tensors().items()}
        out["mlp.temperature"] = np.array([self.members[0].temperature], dtype=np.float64)
        return out


def load_ensemble(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> EnsembleGate:
    parts: dict[str, dict[str, np.ndarray]] = {kind: {} for kind in MEMBERS}
    for key, value in tensors.items():
        kind, _, name = key.partition(".")
        parts[kind][name] = value  # an unknown prefix is a KeyError: a malformed file
    mlp_temperature = float(parts["mlp"].pop("temperature")[0])
    members: list[GatingNetwork | KNNGate | CentroidGate] = [
        load_mlp(parts["mlp"], experts, replace(config, kind="mlp"), mlp_temperature, None),
        load_knn(parts["knn"], experts, replace(config, kind="knn"), config.temperature, None),
        load_centroid(parts["centroid"], experts, replace(config, kind="centroid"), config.temperature, None),
    ]
    return EnsembleGate(members, config=config, temperature=temperature, report=report)
