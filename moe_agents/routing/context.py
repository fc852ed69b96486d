"""Trust contexts: which bucket of queries a trust value belongs to.

Trust is kept per (expert, context). A context is a short string derived from the query:

- ``global``: one context for everything.
- ``gate``: the gate's top label (the expert the gate finds most suited), e.g. ``gate:coding``.
- ``cluster``: the nearest of k centroids of query embeddings, e.g. ``c7``. The centroids are fitted
  with k-means (k-means++ start, seeded) from exemplars, and can keep learning online (MacQueen's
  running-mean update) from the queries that arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import numpy as np

from ..bounds import Ge, check_bounds

__all__ = ["ContextConfig", "ContextKind", "KMeansContexts", "gate_context", "kmeans"]

ContextKind = Literal["global", "gate", "cluster"]


@dataclass(frozen=True, slots=True)
class ContextConfig:
    """How queries are bucketed for trust (the YAML ``trust.context`` settings).

    Attributes:
        kind: ``global``, ``gate`` or ``cluster``.
        clusters: number of k-means clusters (``cluster`` only).
        online: centroids keep moving towards the queries assigned to them.
        seed: k-means seed.
    """

    kind: ContextKind = "gate"
    clusters: Annotated[int, Ge(1)] = 16
    online: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_bounds("trust.context", self, {"kind": self.kind in get_args(ContextKind)})


def kmeans(
    vectors: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with a k-means++ start on cosine geometry (rows are L2-normalised).

    Returns:
        ``(centroids (k', D), counts (k',))`` with ``k' = min(k, number of distinct rows)``.
    """
    x = _normalise(np.asarray(vectors, dtype=np.float32))
    n = len(x)
    if n == 0:
        raise ValueError("kmeans() needs at least one vector")
    k = min(k, len(np.unique(x, axis=0)))
    rng = np.random.default_rng(seed)
    centroids = [x[rng.integers(n)]]
    for _ in range(1, k):  # k-means++: far points are likelier seeds
        d = np.min(1.0 - x @ np.stack(centroids).T, axis=1).clip(min=0.0)
        centroids.append(x[rng.choice(n, p=d / d.sum())] if d.sum() > 0 else x[rng.integers(n)])
    c = np.stack(centroids)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmax(x @ c.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
        c = _normalise(c)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    return c, counts


class KMeansContexts:
    """Buckets query embeddings by their nearest centroid (``c0`` … ``c{k-1}``).

    Args:
        centroids: ``(k, D)`` cluster centres.
        counts: vectors behind each centre (weights of the online update).
        online: move the nearest centroid towards each assigned query.
    """

    def __init__(self, centroids: np.ndarray, counts: np.ndarray | None = None, *, online: bool = False):
        self.centroids = _normalise(np.asarray(centroids, dtype=np.float32).copy())
        self.counts = (
            np.ones(len(self.centroids)) if counts is None else np.asarray(counts, dtype=np.float64).copy()
        )
        self.online = online

    @classmethod
    def fit(cls, vectors: np.ndarray, config: ContextConfig) -> KMeansContexts:
        """Fits ``config.clusters`` centroids to ``vectors`` (e.g. exemplar embeddings)."""
        centroids, counts = kmeans(vectors, config.clusters, seed=config.seed)
        return cls(centroids, counts, online=config.online)

    @property
    def names(self) -> list[str]:
        return [f"c{j}" for j in range(len(self.centroids))]

    def assign_many(self, vectors: np.ndarray) -> list[str]:
        """The context of each row (no online update)."""
        idx = np.argmax(_normalise(np.asarray(vectors, dtype=np.float32)) @ self.centroids.T, axis=1)
        return [f"c{int(j)}" for j in idx]

    def assign(self, vector: np.ndarray) -> str:
        """The context of one query embedding (and, when online, the centroid update)."""
        v = _normalise(np.asarray(vector, dtype=np.float32)[None, :])[0]
        j = int(np.argmax(self.centroids @ v))
        if self.online:
            self.counts[j] += 1.0
            moved = self.centroids[j] + (v - self.centroids[j]) / self.counts[j]
            self.centroids[j] = moved / (np.linalg.norm(moved) + 1e-12)
        return f"c{j}"


def gate_context(labels: Sequence[str], probs: np.ndarray) -> str:
    """The ``gate`` context: the label the gate gives the most probability."""
    return f"gate:{labels[int(np.argmax(probs))]}"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)
