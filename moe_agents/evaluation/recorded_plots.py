"""Plots of the recorded-answers benchmark (``evaluate_recorded``'s report): cost–quality curves,
online trust and residency."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .figures import agg_figure
from .metrics import cost_frontier
from .residency_trace import plot_residency

__all__ = ["plot_recorded"]


def plot_recorded(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Writes the PNG plots of a report: cost/quality curves, online accuracy, residency.

    Raises:
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    cq = report["cost_quality"]
    fig = agg_figure(6 * len(cq), 4.5, layout="tight")
    axes = fig.subplots(1, len(cq), squeeze=False)
    for ax, (name, r) in zip(axes[0], cq.items(), strict=True):
        for key, style in (("trust_router", "o-"), ("success_router", "^-"), ("router_without_trust", "s--")):
            pts = cost_frontier(r[key], r["strong_accuracy"], r["weak_accuracy"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=3, label=key.replace("_", " "))
        ax.plot([0, 1], [r["weak_accuracy"], r["strong_accuracy"]], ":", color="grey", label="random mixing")
        ax.scatter(
            [r["oracle"]["strong_share"]], [r["oracle"]["accuracy"]], marker="*", s=120, label="oracle"
        )
        ax.axhline(0.95 * r["strong_accuracy"], color="red", lw=0.8, label="95 % of GPT-4")
        ax.set(title=f"{name}: accuracy vs GPT-4 calls", xlabel="share of GPT-4 calls", ylabel="accuracy")
        ax.legend(fontsize=8)
    paths.append(out_dir / "cost_quality.png")
    fig.savefig(paths[-1], dpi=120)

    online = report["online"]
    fig = agg_figure(6 * len(online), 8, layout="tight")
    axes = fig.subplots(2, len(online), squeeze=False)
    for col, (name, r) in enumerate(online.items()):
        for policy, p in r["policies"].items():
            axes[0][col].plot(r["checkpoints"], p["cumulative_accuracy"], label=policy)
            axes[1][col].plot(r["checkpoints"], p["cumulative_usd"], label=policy)
        axes[0][col].set(title=f"{name}: online cumulative accuracy", xlabel="questions", ylabel="accuracy")
        axes[1][col].set(title=f"{name}: cumulative cost", xlabel="questions", ylabel="USD", yscale="log")
        axes[0][col].legend(fontsize=7)
    paths.append(out_dir / "online_trust.png")
    fig.savefig(paths[-1], dpi=120)
    if report.get("residency"):
        paths.append(plot_residency(report["residency"], out_dir / "residency.png"))
    return paths
