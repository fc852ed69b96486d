"""Statistics for the routing benchmark: bootstrap confidence intervals, the exact McNemar test,
expected calibration error, and the out-of-scope operating point.

numpy and the standard library only (no scipy): the McNemar p-value is an exact binomial tail
computed with ``math.comb``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Calibration",
    "bootstrap_ci",
    "calibration",
    "choose_threshold",
    "mcnemar",
    "paired_bootstrap_ci",
    "tradeoff",
]


def bootstrap_ci(
    correct: Sequence[bool] | np.ndarray, *, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``correct`` (an accuracy).

    Args:
        correct: one 0/1 outcome per query.
        resamples: bootstrap resamples (queries drawn with replacement, ``len(correct)`` each).
        level: coverage of the interval.
        seed: seeds the resampling; the same seed gives the same interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for no outcomes.
    """
    x = np.asarray(correct, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    means = _resampled_means(x[None, :], resamples, seed)[0]  # (R,)
    return _percentiles(means, level)


def paired_bootstrap_ci(
    a: Sequence[bool] | np.ndarray,
    b: Sequence[bool] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) − mean(b)`` over the same resampled queries."""
    x = np.stack([np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)])  # (2, N)
    if x.shape[1] == 0:
        return math.nan, math.nan
    means = _resampled_means(x, resamples, seed)  # (2, R)
    return _percentiles(means[0] - means[1], level)


def _resampled_means(x: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of each row of ``x`` (K, N) over ``resamples`` shared resamples of its columns: (K, R)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    n = x.shape[1]
    out = np.empty((x.shape[0], resamples))
    for start in range(0, resamples, 250):  # bounded memory: 250 × N indices at a time
        idx = rng.integers(0, n, size=(min(250, resamples - start), n))  # (r, N)
        out[:, start : start + idx.shape[0]] = x[:, idx].mean(axis=2)
    return out


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs.

    Under the null hypothesis each discordant query is equally likely to favour either router, so
    ``min(b, c)`` is binomial(``b + c``, ½); the p-value is twice its lower tail, capped at 1.

    Args:
        b: queries the first router gets right and the second wrong.
        c: queries the second router gets right and the first wrong.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True, slots=True)
class Calibration:
    """Top-1 confidence against correctness in equal-width bins over [0, 1].

    Attributes:
        ece: expected calibration error, ``Σ_b n_b / N · |accuracy_b − confidence_b|``.
        edges: the bin edges (``bins + 1`` values from 0 to 1).
        count: queries per bin.
        confidence: mean confidence per bin (``nan`` for an empty bin).
        accuracy: share correct per bin (``nan`` for an empty bin).
        mean_confidence: mean confidence over all queries.
        accuracy_overall: share correct over all queries.
    """

    ece: float
    edges: tuple[float, ...]
    count: tuple[int, ...]
    confidence: tuple[float, ...]
    accuracy: tuple[float, ...]
    mean_confidence: float
    accuracy_overall: float

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (``nan`` becomes ``None``)."""

        def clean(values: tuple[float, ...]) -> list[float | None]:
            return [None if math.isnan(v) else v for v in values]

        return {
            "ece": self.ece,
            "bins": len(self.count),
            "edges": list(self.edges),
            "count": list(self.count),
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "mean_confidence": self.mean_confidence,
            "accuracy_overall": self.accuracy_overall,
        }


def calibration(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, *, bins: int = 15
) -> Calibration:
    """Bins top-1 confidences (clipped to [0, 1]) and measures the expected calibration error.

    A confidence of exactly 1 falls in the last bin.

    Raises:
        ValueError: the sequences differ in length or are empty, or ``bins`` is below 1.
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1 or conf.size == 0:
        raise ValueError(f"need equal, non-empty 1-d sequences, got {conf.shape} and {hit.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)  # (N,)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=conf, minlength=bins) / count
        acc = np.bincount(which, weights=hit, minlength=bins) / count
    gaps = np.where(count > 0, np.abs(acc - mean_conf), 0.0)
    return Calibration(
        ece=float((count * gaps).sum() / conf.size),
        edges=tuple(float(e) for e in np.linspace(0.0, 1.0, bins + 1)),
        count=tuple(int(c) for c in count),
        confidence=tuple(float(v) for v in mean_conf),
        accuracy=tuple(float(v) for v in acc),
        mean_confidence=float(conf.mean()),
        accuracy_overall=float(hit.mean()),
    )


def choose_threshold(
    oos_fit: Sequence[float] | np.ndarray,
    inscope_fit: Sequence[float] | np.ndarray,
    *,
    max_lost: float = 0.03,
) -> float:
    """The ``min_confidence`` to use: the highest threshold that sends at most ``max_lost`` of the
    in-scope **fit** queries to the fallback (a query falls back when its top-1 confidence is below
    the threshold). It takes fit data only, so the test set cannot leak into the choice.

    Out-of-scope fit confidences do not move the threshold (a higher one always catches more of
    them); they are taken so that a caller states both sides of the operating point, and must be
    present.

    Args:
        oos_fit: top-1 confidences of out-of-scope fit queries (e.g. CLINC ``oos_val``).
        inscope_fit: top-1 confidences of in-scope fit queries (fit splits, held-out exemplars).
        max_lost: most share of in-scope fit queries allowed to fall back.

    Raises:
        ValueError: either set is empty or ``max_lost`` is outside [0, 1).
    """
    inscope = np.sort(np.asarray(inscope_fit, dtype=np.float64))
    if inscope.size == 0 or np.asarray(oos_fit).size == 0:
        raise ValueError("need out-of-scope and in-scope fit confidences")
    if not 0.0 <= max_lost < 1.0:
        raise ValueError(f"max_lost must be in [0, 1), got {max_lost}")
    # fewer than k = floor(max_lost · n) values lie strictly below the k-th smallest one
    return float(inscope[math.floor(max_lost * inscope.size)])


def tradeoff(
    oos: Sequence[float] | np.ndarray, inscope: Sequence[float] | np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per threshold: share of out-of-scope queries that fall back and share of in-scope ones lost
    (both: top-1 confidence below the threshold)."""
    t = np.asarray(thresholds, dtype=np.float64)[:, None]
    caught = (np.asarray(oos, dtype=np.float64)[None, :] < t).mean(axis=1)
    lost = (np.asarray(inscope, dtype=np.float64)[None, :] < t).mean(axis=1)
    return caught, lost
