"""The two training-free gates: ``centroid`` (similarity to each expert's exemplar mean) and ``knn``
(the most similar exemplars vote)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError
from .base import FitReport, GateConfig, SavedGate, normalise, softmax, temper

__all__ = ["CentroidGate", "KNNGate", "load_centroid", "load_knn"]

KNN_FLOOR = 1e-6
"""Every expert keeps at least this vote (relative to the nearest neighbour's)."""


class CentroidGate(SavedGate):
    """Softmax over cosine similarities to each expert's normalised exemplar mean.

    Args:
        centroids: one unit vector per expert, ``(E, D)``.
        experts: the expert names, in ``centroids`` order.
        config: its settings (``temperature`` is used).
        report: how it was fitted.
    """

    kind = "centroid"

    def __init__(
        self,
        centroids: np.ndarray,
        experts: Sequence[str],
        *,
        config: GateConfig = GateConfig(kind="centroid"),  # noqa: B008 -- frozen, so sharing the default is safe
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=config.temperature, report=report)
        self.centroids = np.asarray(centroids, dtype=np.float32)  # (E, D)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``: ``softmax(cos(query, centroid) / temperature)``."""
        q = normalise(self._queries(embeddings))  # (N, D)
        sims = (q @ self.centroids.T).astype(np.float64)  # (N, E)
        return softmax(sims / self.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids}


class KNNGate(SavedGate):
    """Cosine k-nearest exemplars: each of the ``k`` nearest adds ``exp(sim / config.temperature)`` to
    its expert.

    A small floor keeps every expert's probability above 0. A ``temperature`` other than
    ``config.temperature`` (cross-validation scales it) tempers the normalised votes by their ratio
    (``temper``), as it does the MLP's and centroid's softmax, so the gate applies exactly what
    cross-validation scored.

    Args:
        exemplars: unit vectors ``(M, D)``.
        labels: the expert index of each exemplar, ``(M,)``.
        experts: the expert names.
        config: its settings (``k`` and ``temperature`` are used).
        report: how it was fitted.
    """

    kind = "knn"

    def __init__(
        self,
        exemplars: np.ndarray,
        labels: np.ndarray,
        experts: Sequence[str],
        *,
        config: GateConfig = GateConfig(kind="knn"),  # noqa: B008 -- frozen, so sharing the default is safe
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=config.temperature, report=report)
        self.exemplars = np.asarray(exemplars, dtype=np.float32)  # (M, D)
        self.labels = np.asarray(labels, dtype=np.int64)  # (M,)
        if self.labels.shape != (len(self.exemplars),) or not np.all(
            (self.labels >= 0) & (self.labels < len(self.experts))
        ):
            raise ConfigError(f"knn gate: need {len(self.exemplars)} labels below {len(self.experts)}")

    @property
    def dim(self) -> int:
        return int(self.exemplars.shape[1])

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)`` from the votes of the ``k`` most similar exemplars."""
        q = normalise(self._queries(embeddings))  # (N, D)
        n, k = len(q), min(self.config.k, len(self.exemplars))
        sims = (q @ self.exemplars.T).astype(np.float64)  # (N, M)
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k)
        top = np.take_along_axis(sims, nearest, axis=1)  # (N, k)
        weight = np.exp((top - top.max(axis=1, keepdims=True)) / self.config.temperature)  # (N, k), max 1
        votes = np.full((n, len(self.experts)), KNN_FLOOR)  # (N, E)
        np.add.at(votes, (np.arange(n)[:, None], self.labels[nearest]), weight)
        return temper(votes / votes.sum(axis=1, keepdims=True), self.temperature / self.config.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"exemplars": self.exemplars, "labels": self.labels}


def load_centroid(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> CentroidGate:
    centroids = tensors["centroids"]
    if centroids.ndim != 2 or len(centroids) != len(experts):
        raise ValueError(f"centroids have shape {centroids.shape} for {len(experts)} experts")
    gate = CentroidGate(centroids, experts, config=config, report=report)
    gate.temperature = temperature
    return gate


def load_knn(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> KNNGate:
    try:
        gate = KNNGate(tensors["exemplars"], tensors["labels"], experts, config=config, report=report)
    except ConfigError as exc:
        raise ValueError(exc.message) from exc
    if gate.exemplars.ndim != 2:
        raise ValueError(f"exemplars have shape {gate.exemplars.shape}")
    gate.temperature = temperature
    return gate
