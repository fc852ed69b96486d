"""Rich tables for the report of ``moe-agents eval recorded``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

__all__ = ["render_recorded"]


def _pct(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.1%}"


def render_recorded(
    report: Mapping[str, Any], *, strong_share_goals: Mapping[str, float] | None = None
) -> list[Table]:
    """One table per experiment: cost/quality, online trust, aggregation, residency.

    Args:
        report: what ``evaluate_recorded`` returned.
        strong_share_goals: per data set, the largest share of GPT-4 calls with which the trust
            router should reach 95 % of GPT-4's accuracy (a benchmark's goal); each is marked met
            or not in the cost/quality table.
    """
    goals = strong_share_goals or {}
    tables: list[Table] = []
    cq = Table(title="1. cost/quality routing: share of GPT-4 calls needed (lower is better)")
    for col in ("data", "router", "APGR", "for 80 % of GPT-4 acc.", "for 95 % of GPT-4 acc."):
        cq.add_column(col, justify="left" if col in ("data", "router") else "right")
    for name, r in report["cost_quality"].items():
        need = r["strong_share_needed"]
        for key in ("trust_router", "success_router", "router_without_trust", "random_mixing", "oracle"):
            cq.add_row(
                f"{name} ({r['folds']} folds)" if key == "trust_router" else "",
                key.replace("_", " "),
                "—" if r["apgr"][key] is None else f"{r['apgr'][key]:.3f}",
                _pct(need["80%"][key]),
                _pct(need["95%"][key]),
            )
        if name in goals:
            got = need["95%"]["trust_router"]
            met = got is not None and got <= goals[name]
            cq.add_row(
                "", f"goal: 95 % with <= {goals[name]:.0%} GPT-4 calls", "", "", "met" if met else "NOT met"
            )
        cq.add_row(
            "",
            "single models",
            "",
            f"Mixtral {r['weak_accuracy']:.3f}",
            f"GPT-4 {r['strong_accuracy']:.3f}",
            end_section=True,
        )
    tables.append(cq)

    on = Table(title="2. online trust (one pass, seeded order; feedback = recorded correctness)")
    for col in (
        "data",
        "policy",
        "accuracy",
        "USD / 1k",
        "regret vs best",
        "regret vs oracle",
        "experts used",
        "usage entropy",
    ):
        on.add_column(col, justify="left" if col in ("data", "policy") else "right")
    for name, r in report["online"].items():
        for i, (policy, p) in enumerate(r["policies"].items()):
            on.add_row(
                f"{name} ({r['questions']})" if i == 0 else "",
                policy,
                f"{p['accuracy']:.3f}",
                f"{p['usd_per_1k']:.2f}",
                f"{p['regret_vs_best_single']:.0f}",
                f"{p['regret_vs_oracle']:.0f}",
                str(p["distinct_experts"]),
                f"{p['usage_entropy']:.2f}",
                end_section=i == len(r["policies"]) - 1,
            )
    tables.append(on)

    ag = report["aggregation"]
    agg = Table(title=f"3. aggregation over 6 models on GSM8K (graded by {ag['grader']})")
    agg.add_column("method")
    agg.add_column("accuracy", justify="right")
    for method, acc in ag["methods"].items():
        agg.add_row(method.replace("_", " "), f"{acc:.3f}")
    best = ag["best_single"]
    agg.add_row(f"best single ({best['model']}), same grader", f"{best['same_grader']:.3f}")
    agg.add_row(f"best single ({best['model']}), recorded", f"{best['recorded']:.3f}")
    agg.add_row("oracle (any model right), same grader", f"{ag['oracle_same_grader']:.3f}")
    tv = ag["methods"]["trust_voting"]
    agg.add_row(
        "trust voting − best single",
        f"{tv - best['recorded']:+.3f} (recorded), {tv - best['same_grader']:+.3f} (same grader)",
    )
    tables.append(agg)

    res = report.get("residency")
    if res:
        tables.append(_residency_table(res))
    return tables


def _residency_table(res: Mapping[str, Any]) -> Table:
    gb = res["budget_bytes"] / 1e9
    table = Table(
        title=f"4. residency: {res['n_queries']} queries over {len(res['models'])} local models, "
        f"{gb:.0f} GB budget, locality {res['locality']}"
    )
    columns = (
        "selector",
        "hysteresis",
        "swap weight",
        "hit rate",
        "swaps / query",
        "GB loaded",
        "load s",
        "mean quality",
        "quality cost",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "selector" else "right")
    for r in res["rows"]:
        table.add_row(
            r["selector"] if r["selector"] != "lru" else "plain top-1 + LRU (null model)",
            "—" if r["hysteresis"] is None else f"{r['hysteresis']:g}",
            "—" if r["swap_weight"] is None else f"{r['swap_weight']:g}",
            f"{r['hit_rate']:.4f}",
            f"{r['swaps_per_selection']:.4f}",
            f"{r['bytes_loaded'] / 1e9:.1f}",
            f"{r['load_s']:.1f}",
            f"{r['mean_quality']:.3f}",
            f"{r['quality_cost']:.3f}",
        )
    return table
