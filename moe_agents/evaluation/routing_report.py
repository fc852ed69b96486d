"""The routing benchmark's report as rich renderables and as Markdown (the README's table).

Both read the JSON-ready report of ``evaluate_routing`` (the dict written by ``--json``), so a saved
report can be rendered again without re-running anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["CONTENDER_TITLES", "render_routing", "routing_lines", "routing_markdown"]

CONTENDER_TITLES: Mapping[str, str] = {
    "keyword": "keyword self-assessment (seed heuristic)",
    "centroid": "nearest exemplar centroid",
    "knn": "k-NN over exemplars",
    "mlp": "MLP gate",
    "router": "full router (MLP gate × self-assessment × load)",
    "router-cv": "full router, gate kind/weight/temperature cross-validated on the exemplars",
    "semantic-router": "semantic-router (peer: same encoder and exemplars, reads text only)",
}


def _pct(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1%}"


def _with_ci(accuracy: float, ci: list[float] | tuple[float, float]) -> str:
    return f"{_pct(accuracy)} [{_pct(ci[0])}, {_pct(ci[1])}]"


def _rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per variant and contender."""
    labels = list(report["set"]["per_label"])
    header = ["router", "gates fitted on", "accuracy [95 % CI]", "text only [95 % CI]", *labels, "macro-F1"]
    rows = []
    for variant, routers in report["variants"].items():
        for name, r in routers.items():
            rows.append(
                [
                    name,
                    variant,
                    _with_ci(r["accuracy"], r["ci95"]),
                    _with_ci(r["text_only"]["accuracy"], r["text_only"]["ci95"]),
                    *(_pct(r["per_label_accuracy"].get(lab)) for lab in labels),
                    f"{r['macro_f1']:.3f}",
                ]
            )
    return header, rows


def routing_lines(report: Mapping[str, Any]) -> list[str]:
    """Plain-text lines: the paired test per variant, the calibration errors, the out-of-scope result."""
    lines = []
    for variant, p in report.get("paired", {}).items():
        parts = []
        for scope in ("overall", "text_only"):
            q = p[scope]
            lo, hi = q["difference_ci95"]
            parts.append(
                f"{scope.replace('_', '-')} (n={q['n']}): router right & peer wrong b={q['b_router_only']}, "
                f"peer right & router wrong c={q['c_peer_only']}, exact McNemar p={q['mcnemar_p']:.3g}, "
                f"difference {q['difference']:+.1%} [{lo:+.1%}, {hi:+.1%}]"
            )
        lines.append(f"paired, {p['router']} vs {p['peer']} ({variant}): " + "; ".join(parts))
    for variant, results in report.get("calibration", {}).items():
        parts = [
            f"{name} ECE {c['ece']:.3f} (mean confidence {c['mean_confidence']:.3f}, accuracy "
            f"{c['accuracy_overall']:.3f})"
            for name, c in results.items()
        ]
        bins = next(iter(results.values()))["bins"] if results else 0
        lines.append(f"calibration ({variant}, {bins} bins, top-1): " + "; ".join(parts))
    oos = report.get("out_of_scope")
    if oos:
        fit = oos["fit"]
        lines.append(
            f"out-of-scope (gates: exemplars): min_confidence {oos['threshold']:.3f} chosen on fit data "
            f"({fit['oos_n']} CLINC {'+'.join(fit['oos_splits'])} vs {fit['inscope_n']} in-scope: "
            f"{fit['inscope_exemplars_cv']} exemplars, cross-validated, + {fit['inscope_fit_split']} "
            f"fit-split queries; fit: {fit['oos_to_fallback']:.1%} caught, "
            f"{fit['inscope_lost']:.1%} lost); on test: {oos['oos_caught']}/{oos['oos_n']} = "
            f"{oos['oos_to_fallback']:.1%} of CLINC oos_test sent to the fallback "
            f"({oos['fallback_expert']}), "
            f"{oos['inscope_lost_n']}/{oos['inscope_n']} = {oos['inscope_lost']:.1%} of in-scope test "
            "queries lost to it"
        )
    return lines


def render_routing(report: Mapping[str, Any]) -> Table:
    """A rich table: accuracy with its 95 % interval, overall and text-only, per-label accuracy and
    macro-F1, for every contender and variant; the best accuracy of each variant is bold."""
    from rich.table import Table

    header, rows = _rows(report)
    n, text_n = report["set"]["n"], report["set"]["text_only"]
    table = Table(title=f"Routing accuracy on {n} test queries ({text_n} text-only)")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 2 else "right")
    best = {v: max(r["accuracy"] for r in routers.values()) for v, routers in report["variants"].items()}
    flat = [(v, r) for v, routers in report["variants"].items() for r in routers.values()]
    for (variant, r), row in zip(flat, rows, strict=True):
        if r["accuracy"] == best[variant]:
            row[2] = f"[bold]{row[2]}[/bold]"
        table.add_row(*row)
    return table


def routing_markdown(report: Mapping[str, Any], *, command: str | None = None) -> str:
    """The report as Markdown: the table (router names spelled out) and the lines below it."""
    header, rows = _rows(report)
    out = []
    if command:
        out.append(f"`{command}`\n")
    s = report["set"]
    out.append(
        f"{s['n']} test queries ({s['text_only']} text-only), per label {s['per_label']}, seed {s['seed']}; "
        f"95 % percentile bootstrap, {report['bootstrap']['resamples']} resamples.\n"
    )
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    titles = dict(CONTENDER_TITLES)
    if report.get("peer_version"):
        titles["semantic-router"] = titles["semantic-router"].replace(
            "semantic-router", f"semantic-router {report['peer_version']}", 1
        )
    for row in rows:
        row = [titles.get(row[0], row[0]), f"`{row[1]}`", *row[2:]]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    out.extend(f"- {line}" for line in routing_lines(report))
    return "\n".join(out) + "\n"
