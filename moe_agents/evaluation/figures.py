"""Figures for the benchmark plots: matplotlib's object API on the Agg canvas, imported on first use;
and the routing benchmark's reliability diagram and out-of-scope trade-off curve.

No pyplot and no ``matplotlib.use``: a figure made here touches no global state, so plotting from the
library never changes the backend of an application that also uses matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["agg_figure", "plot_oos_curve", "plot_reliability"]


def agg_figure(
    width: float, height: float, *, layout: Literal["constrained", "tight"] = "constrained"
) -> Figure:
    """A new figure of ``width`` × ``height`` inches on the Agg canvas (its ``savefig`` writes PNGs).

    Raises:
        ConfigError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib: install moe-agents[eval]") from exc
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(calibration: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> Path:
    """Writes a reliability diagram: per router and variant, accuracy against mean top-1 confidence
    in each non-empty bin (marker size grows with the bin's share of queries), the diagonal for
    perfect calibration, and the ECE in the legend.

    Args:
        calibration: ``{variant: {router: Calibration.to_dict()}}`` (the report's ``calibration``).
        path: the PNG to write (parent folders are created).

    Returns:
        ``path``.

    Raises:
        ValueError: nothing to plot.
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    routers = list(dict.fromkeys(r for rs in calibration.values() for r in rs))
    if not routers:
        raise ValueError("no calibration results to plot")
    fig = agg_figure(4.8 * len(routers), 4.6)
    axes = fig.subplots(1, len(routers), squeeze=False)[0]
    for ax, name in zip(axes, routers, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        for variant, results in calibration.items():
            if name not in results:
                continue
            r = results[name]
            total = max(sum(r["count"]), 1)
            pts = [
                (conf, acc, n)
                for conf, acc, n in zip(r["confidence"], r["accuracy"], r["count"], strict=True)
                if n > 0
            ]
            xs, ys, ns = zip(*pts, strict=True) if pts else ((), (), ())
            (line,) = ax.plot(
                xs, ys, marker="o", markersize=3, linewidth=1.2, label=f"{variant}: ECE {r['ece']:.3f}"
            )
            ax.scatter(xs, ys, s=[8 + 400 * n / total for n in ns], color=line.get_color(), alpha=0.35)
        bins = len(next(iter(calibration.values()))[name]["count"])
        _unit_axes(ax, "top-1 confidence (bin mean)", "accuracy in bin", f"{name}: reliability ({bins} bins)")
    return _save(fig, path)


def plot_oos_curve(oos: Mapping[str, Any], path: Path) -> Path:
    """Writes the out-of-scope trade-off: share of out-of-scope queries sent to the fallback against
    share of in-scope queries lost to it, over ``min_confidence`` thresholds, on fit data (where the
    threshold is chosen) and on test data, with the chosen threshold marked and the targets drawn.

    Args:
        oos: the report's ``out_of_scope`` section.
        path: the PNG to write (parent folders are created).

    Returns:
        ``path``.

    Raises:
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    curve = oos["curve"]
    fig = agg_figure(6.4, 4.8)
    ax = fig.subplots()
    ax.plot(
        curve["fit_inscope_lost"], curve["fit_oos_to_fallback"], linestyle="--", label="fit data (choice)"
    )
    ax.plot(curve["test_inscope_lost"], curve["test_oos_to_fallback"], label="test data")
    fit = oos["fit"]
    ax.scatter([fit["inscope_lost"]], [fit["oos_to_fallback"]], marker="s", color="C0", zorder=3)
    ax.scatter(
        [oos["inscope_lost"]],
        [oos["oos_to_fallback"]],
        marker="*",
        s=160,
        color="C3",
        zorder=3,
        label=f"chosen min_confidence {oos['threshold']:.3f} (test, routed)",
    )
    ax.axvline(0.03, color="grey", linestyle=":", linewidth=1)
    ax.axhline(0.70, color="grey", linestyle=":", linewidth=1, label="targets: ≤ 3 % lost, ≥ 70 % caught")
    ax.set_xscale("symlog", linthresh=0.01)
    _unit_axes(
        ax,
        "in-scope queries lost to the fallback",
        "out-of-scope queries sent to the fallback",
        f"out-of-scope → fallback ({oos['fallback_expert']}), over min_confidence",
        top=1.02,
    )
    return _save(fig, path)


def _unit_axes(ax: Any, xlabel: str, ylabel: str, title: str, *, top: float = 1.0) -> None:
    """Both axes from 0 to 1 (``top`` for y), labels, title, the legend top left and a light grid."""
    ax.set_xlim(0, 1)
    ax.set_ylim(0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
