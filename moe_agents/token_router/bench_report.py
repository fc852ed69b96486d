"""The token-router benchmark's tables, plot and target checks, from its JSON-ready report.

``check_targets`` checks targets a benchmark sets (``TokenRouterTargets``) at a cache of 2k experts
per layer; ``render_token_router`` gives rich tables for a console; ``plot_token_router`` draws the
hit-rate vs ΔPPL Pareto plot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..evaluation.figures import agg_figure
from .tune import QualityLimits, check, row_checks

__all__ = ["TokenRouterTargets", "check_targets", "plot_token_router", "render_token_router"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenRouterTargets:
    """What the token router should reach at a cache of 2k experts per layer, against plain top-k +
    LRU: a benchmark's targets, checked by ``check_targets``.

    Attributes:
        hit_rate_gain_points: the least hit-rate gain, in percentage points.
        quality: the most a setting may cost in quality (also the tuner's limits).
        selection_pct_of_moe_block: the most the expert selection may cost, in percent of the MoE
            block's time.
    """

    hit_rate_gain_points: float
    quality: QualityLimits
    selection_pct_of_moe_block: float


def _with_all(checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {**checks, "all_met": all(c["met"] for c in checks.values())}


def check_targets(
    report: dict[str, Any], targets: TokenRouterTargets, mode: str = "decode"
) -> dict[str, Any]:
    """``targets`` checked on a report at a cache of 2k experts per layer.

    Returns:
        ``goals``: ``targets`` as a dict; ``per_lambda``: the checks of every cache-bonus-only row (λ > 0);
        ``tuned``: those of the tuned policy (λ and γ chosen on train text); ``overhead`` (and
        ``deployment_overhead``): the selection cost against its bound; ``offload_decode_tokens_per_s``
        (and ``deployment_offload``): ours faster than plain under real offload.
    """
    if mode not in report:
        mode = next(m for m in ("decode", "prefill") if m in report)
    cap = str(report["two_k_capacity"])
    if cap not in report[mode]["ours"]:
        return {}
    plain = report[mode]["plain"][cap]["lru"]

    def row_targets(row: dict[str, Any]) -> dict[str, Any]:
        gain = 100 * (row["hit_rate"] - plain["hit_rate"])
        return _with_all(
            {
                "hit_rate_gain_points": check(gain, ">=", targets.hit_rate_gain_points),
                **row_checks(row, plain, targets.quality),
            }
        )

    out: dict[str, Any] = {
        "mode": mode, "capacity": int(cap), "goals": dataclasses.asdict(targets), "per_lambda": {},
    }  # fmt: skip
    for lam, row in report[mode]["ours"][cap].items():
        if float(lam) != 0.0:
            out["per_lambda"][lam] = row_targets(row)
    if "tuned" in report[mode]:
        tuned = report[mode]["tuned"]
        out["tuned"] = {"label": tuned["label"], **row_targets(tuned)}
    for key in ("overhead", "deployment_overhead"):
        if key in report:
            pct = report[key]["selection_pct_of_moe_block"]
            out[key] = check(pct, "<=", targets.selection_pct_of_moe_block)
    for key, name in (
        ("offload", "offload_decode_tokens_per_s"),
        ("deployment_offload", "deployment_offload"),
    ):
        if key in report:
            off = report[key]
            met = off["ours"]["tokens_per_s"] > off["plain"]["tokens_per_s"]
            out[name] = {
                "target": "real-offload decode tokens/s higher than plain",
                "value": off["ours"]["tokens_per_s"], "plain": off["plain"]["tokens_per_s"],
                "lambda": off["lambda"], "capacity": off["capacity"], "met": met,
                "verdict": "met" if met else "NOT met",
            }  # fmt: skip
    return out


def _router_row(cap: Any, label: str, cache: str, row: dict[str, Any], delta: str) -> list[str]:
    return [
        str(cap), label, cache, f"{row['hit_rate']:.3f}", delta, f"{row['churn']:.3f}",
        f"{row['repicks_per_token_layer']:.3f}", f"{row['load_entropy']:.3f}", f"{row['max_vio']:.2f}",
        f"{row['dead_experts_per_layer']:.2f}",
    ]  # fmt: skip


_COLUMNS = (
    "C",
    "router",
    "cache",
    "hit rate",
    "ΔPPL %",
    "churn",
    "re-picks",
    "entropy",
    "MaxVio",
    "dead/layer",
)


def render_token_router(report: dict[str, Any]) -> list[Any]:
    """Rich renderables: the model line, the tuning table, per mode the cache runs, the overhead, the
    real-offload speeds and, if the report has them, the targets."""
    from rich.table import Table

    out: list[Any] = []
    m = report["model"]
    training = m.get("training", {})
    out.append(
        f"tiny Qwen3-MoE: {m['layers']} layers, E={m['experts']}, k={m['top_k']}, hidden {m['hidden']}; "
        f"trained {training.get('steps_done', '?')} steps in {training.get('minutes', 0.0):.1f} min, "
        f"final train loss {training.get('final_loss', 0.0):.3f} nats/byte; held-out: "
        f"{report['settings']['tokens']} tokens of {report['settings']['documents']} GSM8K test texts"
    )
    if "tuning" in report:
        tune = report["tuning"]
        table = Table(
            title=f"tuning on {tune['split']} ({tune['tokens']} tokens, {tune['mode']}, "
            f"C={tune['capacity']}): plain top-k + LRU hit rate {tune['plain_lru']['hit_rate']:.3f}; chosen "
            f"λ={tune['chosen']['lambda']} γ={tune['chosen']['balance_gamma']}"
        )
        for col in ("λ", "γ", "hit rate", "ΔPPL %", "entropy", "dead/layer", "quality limits"):
            table.add_column(col, justify="right")
        for row in tune["rows"].values():
            table.add_row(
                str(row["lambda"]), str(row["balance_gamma"]), f"{row['hit_rate']:.3f}",
                f"{row['delta_ppl_pct']:+.2f}", f"{row['load_entropy']:.3f}",
                f"{row['dead_experts_per_layer']:.2f}", "met" if row["quality_met"] else "not met",
            )  # fmt: skip
        out.append(table)
    for mode in ("decode", "prefill"):
        if mode not in report:
            continue
        r = report[mode]
        table = Table(title=f"{mode} (GSM8K test): plain top-k PPL {r['plain_ppl']:.4f} (byte level)")
        for col in _COLUMNS:
            table.add_column(col, justify="left" if col in ("router", "cache") else "right")
        for cap in report["capacities"]:
            plain = r["plain"][str(cap)]
            for policy in ("lru", "lru+hysteresis"):
                table.add_row(*_router_row(cap, "plain top-k", policy, plain[policy], "0"))
            table.add_row(
                str(cap), "plain top-k", "belady", f"{plain['belady']['hit_rate']:.3f}", "0", *[""] * 5
            )
            for lam, row in r["ours"][str(cap)].items():
                table.add_row(*_router_row(cap, f"ours λ={lam}", "lru", row, f"{row['delta_ppl_pct']:+.2f}"))
            for key in ("tuned", "trust"):
                extra = r.get(key)
                if extra and extra["capacity"] == cap:
                    table.add_row(
                        *_router_row(cap, extra["label"], "lru", extra, f"{extra['delta_ppl_pct']:+.2f}")
                    )
            table.add_section()
        out.append(table)
    table = Table(title="router cost per layer-token (decode, one token)")
    for col in (
        "model",
        "plain router µs",
        "neutral µs",
        "ours µs",
        "selection µs",
        "% MoE block",
        "MoE block µs",
    ):
        table.add_column(col, justify="right")
    for key, name in (("overhead", "tiny (trained)"), ("deployment_overhead", "Qwen3-Omni-30B-A3B layer")):
        if key in report:
            o = report[key]
            keys = ("plain_router_us", "neutral_router_us", "ours_router_us", "selection_us",
                    "selection_pct_of_moe_block", "moe_block_us")  # fmt: skip
            table.add_row(name, *(f"{o[k]:.1f}" for k in keys))
    out.append(table)
    for key, name in (
        ("offload", "tiny (trained)"),
        ("deployment_offload", "Qwen3-Omni-30B-A3B layer, random"),
    ):
        if key in report:
            off = report[key]
            out.append(
                f"real offload, {name}, C={off['capacity']}, λ={off['lambda']} γ={off['balance_gamma']}, "
                f"{off['tokens']} tokens × {off['repeats']} runs (median tok/s): "
                + ", ".join(
                    f"{run} {off[run]['tokens_per_s']:.1f}"
                    + (f" (hit rate {off[run]['hit_rate']:.2f})" if "hit_rate" in off[run] else "")
                    for run in ("resident", "plain", "ours")
                )
                + f"; ours/plain {off['speedup_ours_vs_plain']:.2f}×"
            )
    out.extend(_render_targets(report.get("targets", {})))
    return out


def _render_targets(t: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    if not t:
        return []
    goal, quality = t["goals"], t["goals"]["quality"]
    table = Table(title=f"targets at C = 2k = {t['capacity']} ({t['mode']}, vs plain top-k + LRU)")
    for col in (
        "router",
        f"hit-rate gain (≥ {goal['hit_rate_gain_points']:g} pts)",
        f"ΔPPL % (≤ {quality['delta_ppl_pct']:g})",
        f"entropy ratio (≥ {quality['entropy_ratio']:g})",
        f"dead/layer over plain (≤ {quality['dead_experts_per_layer']:g})",
        "all",
    ):
        table.add_column(col, justify="right")

    def cell(c: dict[str, Any]) -> str:
        return f"{c['value']:.2f} {'met' if c['met'] else 'NOT met'}"

    rows = [(f"λ={lam}", c) for lam, c in t["per_lambda"].items()]
    if "tuned" in t:
        rows.append((t["tuned"]["label"], t["tuned"]))
    for name, c in rows:
        table.add_row(
            name, cell(c["hit_rate_gain_points"]), cell(c["delta_ppl_pct"]), cell(c["entropy_ratio"]),
            cell(c["dead_experts_per_layer_over_plain"]), "met" if c["all_met"] else "NOT met",
        )  # fmt: skip
    out: list[Any] = [table]
    for key, name in (("overhead", "tiny model"), ("deployment_overhead", "Qwen3-Omni-30B-A3B MoE layer")):
        if key in t:
            ov = t[key]
            out.append(
                f"selection overhead (≤ {goal['selection_pct_of_moe_block']:g} % of the MoE block), {name}: "
                f"{ov['value']:.1f} % — "
                f"{'met' if ov['met'] else 'NOT met'}"
            )
    for key, name in (
        ("offload_decode_tokens_per_s", "tiny model"),
        ("deployment_offload", "deployment-size layer"),
    ):
        if key in t:
            o = t[key]
            out.append(
                f"{o['target']}, {name}: ours {o['value']:.1f} vs plain {o['plain']:.1f} tok/s "
                f"— {o['verdict']}"
            )
    return out


def plot_token_router(report: dict[str, Any], path: Path) -> Path:
    """Hit rate vs ΔPPL (Pareto plot), one panel per mode: the cache bonus's λ curve per cache size,
    the tuned policy, plain top-k + LRU / Belady marked at ΔPPL 0, and the ΔPPL limit if the report
    has targets.

    Raises:
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    modes = [m for m in ("decode", "prefill") if m in report]
    limit = report.get("targets", {}).get("goals", {}).get("quality", {}).get("delta_ppl_pct")
    fig = agg_figure(6 * len(modes), 4.5, layout="tight")
    axes = fig.subplots(1, len(modes), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, cap in enumerate(report["capacities"]):
            color = f"C{i}"
            rows = report[mode]["ours"][str(cap)]
            lams = sorted(rows, key=float)
            ax.plot(
                [rows[lam]["delta_ppl_pct"] for lam in lams],
                [rows[lam]["hit_rate"] for lam in lams],
                "o-", color=color, label=f"ours C={cap}",
            )  # fmt: skip
            for lam in lams:
                ax.annotate(f"λ={lam}", (rows[lam]["delta_ppl_pct"], rows[lam]["hit_rate"]), fontsize=7)
            plain = report[mode]["plain"][str(cap)]
            ax.scatter([0], [plain["lru"]["hit_rate"]], marker="s", color=color, label=f"top-k+LRU C={cap}")
            ax.scatter([0], [plain["belady"]["hit_rate"]], marker="*", s=120, color=color,
                       label=f"top-k+Belady C={cap}")  # fmt: skip
        tuned = report[mode].get("tuned")
        if tuned:
            ax.scatter([tuned["delta_ppl_pct"]], [tuned["hit_rate"]], marker="D", s=60, color="black",
                       label=f"{tuned['label']} C={tuned['capacity']}")  # fmt: skip
        if limit is not None:
            ax.axvline(limit, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("ΔPPL vs plain top-k (%)")
        ax.set_ylabel("expert-cache hit rate")
        ax.set_title(f"{mode} (E={report['model']['experts']}, k={report['model']['top_k']})")
        ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
