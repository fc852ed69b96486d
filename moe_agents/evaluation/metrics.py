"""Routing scores (accuracy, per-label accuracy, macro-F1, confusion), latency summaries, and their
rendering as a rich table and a PNG of confusion matrices.

Computation uses numpy only; matplotlib and rich are imported when a plot or table is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from .figures import agg_figure

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "OTHER",
    "RoutingScores",
    "cost_frontier",
    "latency_summary",
    "plot_confusions",
    "render_confusion",
    "render_table",
    "score_routing",
]

OTHER = "other"
"""Confusion-matrix column for predictions outside the labels (present only when there are some)."""


@dataclass(frozen=True, eq=False)
class RoutingScores:
    """How well one router's choices match the true labels (compared by identity: it holds an array).

    Attributes:
        labels: the labels, in the order of the confusion matrix.
        accuracy: share of queries routed to their true label.
        per_label_accuracy: per true label, the share routed correctly (its recall); ``nan`` for a
            label with no queries.
        per_label_count: per true label, how many queries carry it.
        macro_f1: unweighted mean of the per-label F1 scores, over the labels that occur among the
            true or the predicted labels.
        confusion: counts, rows = true label, columns = predicted label, both in ``labels`` order, plus
            a last ``other`` column when some predictions fall outside ``labels`` (read-only).
        n: number of queries.
    """

    labels: tuple[str, ...]
    accuracy: float
    per_label_accuracy: Mapping[str, float]
    per_label_count: Mapping[str, int]
    macro_f1: float
    confusion: np.ndarray
    n: int

    @property
    def columns(self) -> tuple[str, ...]:
        """The confusion matrix's column names: ``labels``, then ``other`` when it has that column."""
        return self.labels + ((OTHER,) if self.confusion.shape[1] > len(self.labels) else ())


def score_routing(true: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> RoutingScores:
    """Scores predicted labels against true ones.

    The F1 of a label is ``2·TP / (2·TP + FP + FN)``; a prediction outside ``labels`` is a miss for
    its query's true label and a false positive for no label.

    Args:
        true: the true label of each query; each must be in ``labels``.
        pred: the predicted label of each query (any string).
        labels: the label set, in report order.

    Raises:
        ValueError: the sequences differ in length or are empty, ``labels`` is empty or has
            duplicates, or a true label is not in ``labels``.
    """
    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and distinct, got {labels}")
    if len(true) != len(pred):
        raise ValueError(f"{len(true)} true labels but {len(pred)} predictions")
    if not true:
        raise ValueError("cannot score an empty set of predictions")
    unknown = sorted(set(true) - set(labels))
    if unknown:
        raise ValueError(f"true labels {unknown} are not in labels {labels}")

    index = {label: i for i, label in enumerate(labels)}
    other = len(labels)
    rows = np.array([index[t] for t in true])
    cols = np.array([index.get(p, other) for p in pred])
    confusion = np.zeros((len(labels), len(labels) + 1), dtype=np.int64)
    np.add.at(confusion, (rows, cols), 1)
    if not confusion[:, other].any():
        confusion = confusion[:, :other].copy()
    confusion.flags.writeable = False

    square = confusion[:, : len(labels)]
    tp = np.diag(square).astype(float)  # (L,)
    support = confusion.sum(axis=1).astype(float)  # (L,) true counts
    predicted = square.sum(axis=0).astype(float)  # (L,) predicted counts
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / support
        f1 = 2 * tp / (support + predicted)
    occurring = (support + predicted) > 0
    return RoutingScores(
        labels=labels,
        accuracy=float(tp.sum() / len(true)),
        per_label_accuracy=MappingProxyType({lab: float(recall[i]) for i, lab in enumerate(labels)}),
        per_label_count=MappingProxyType({lab: int(support[i]) for i, lab in enumerate(labels)}),
        macro_f1=float(f1[occurring].mean()),
        confusion=confusion,
        n=len(true),
    )


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, 99th percentile and mean of latencies given in seconds, reported in milliseconds.

    Returns:
        ``{"p50_ms": ..., "p99_ms": ..., "mean_ms": ...}`` (percentiles by linear interpolation).

    Raises:
        ValueError: ``seconds`` is empty.
    """
    if len(seconds) == 0:
        raise ValueError("no latencies to summarise")
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def plot_confusions(results: Mapping[str, RoutingScores], path: Path) -> Path:
    """Writes one PNG with a row-normalised confusion-matrix heatmap per router.

    Each cell shows the percentage of the row's true label routed to the column's label.

    Args:
        results: scores by router name, drawn left to right, three per row.
        path: the PNG to write (parent folders are created).

    Returns:
        ``path``.

    Raises:
        ValueError: ``results`` is empty.
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    if not results:
        raise ValueError("no routing results to plot")
    ncols = min(3, len(results))
    nrows = -(-len(results) // ncols)
    fig = agg_figure(4.6 * ncols, 4.2 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (name, scores) in zip(axes, results.items(), strict=False):
        counts = scores.confusion.astype(float)
        totals = counts.sum(axis=1, keepdims=True)
        share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(share.shape[1]), scores.columns, rotation=45, ha="right")
        ax.set_yticks(range(share.shape[0]), scores.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}\nacc {scores.accuracy:.1%} · macro-F1 {scores.macro_f1:.3f}", fontsize=10)
        for (i, j), value in np.ndenumerate(share):
            color = "white" if value > 0.6 else "black"
            ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=8, color=color)
    for ax in axes[len(results) :]:
        ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def render_table(results: Mapping[str, RoutingScores]) -> Table:
    """A rich table: one row per router with n, overall accuracy, per-label accuracy and macro-F1.

    Label columns are the union of every result's labels, in first-seen order; a label a router was
    not scored on shows ``–``. The best overall accuracy and macro-F1 are bold.
    """
    from rich.table import Table

    labels = list(dict.fromkeys(label for scores in results.values() for label in scores.labels))
    table = Table(title="Routing accuracy")
    table.add_column("router")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")
    for label in labels:
        table.add_column(label, justify="right")
    table.add_column("macro-F1", justify="right")
    best_acc = max((s.accuracy for s in results.values()), default=None)
    best_f1 = max((s.macro_f1 for s in results.values()), default=None)
    for name, scores in results.items():
        per_label = [
            _pct(scores.per_label_accuracy[label]) if label in scores.per_label_accuracy else "–"
            for label in labels
        ]
        acc = _pct(scores.accuracy)
        f1 = f"{scores.macro_f1:.3f}"
        table.add_row(
            name,
            str(scores.n),
            f"[bold]{acc}[/bold]" if scores.accuracy == best_acc else acc,
            *per_label,
            f"[bold]{f1}[/bold]" if scores.macro_f1 == best_f1 else f1,
        )
    return table


def _pct(value: float) -> str:
    return "–" if np.isnan(value) else f"{value:.1%}"


def render_confusion(scores: RoutingScores, *, title: str | None = None) -> Table:
    """A rich table of the confusion matrix: one row per true label, one column per predicted one."""
    from rich.table import Table

    table = Table(title=title or "Confusion (rows: true, columns: routed to)")
    table.add_column("true \\ routed")
    for column in scores.columns:
        table.add_column(column, justify="right")
    for label, row in zip(scores.labels, scores.confusion, strict=True):
        table.add_row(label, *(str(int(v)) for v in row))
    return table


def cost_frontier(
    points: Sequence[Mapping[str, float]], strong: float, weak: float
) -> list[tuple[float, float]]:
    """(share, accuracy) points plus the two single-model ends, sorted by share; each point keeps the
    best accuracy reached at that share or less (a router can always spend less)."""
    pts = sorted({(0.0, weak), (1.0, strong), *((p["strong_share"], p["accuracy"]) for p in points)})
    out: list[tuple[float, float]] = []
    best = -1.0
    for share, acc in pts:
        best = max(best, acc)
        out.append((share, best))
    return out
