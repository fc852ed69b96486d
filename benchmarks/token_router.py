"""Token router on a tiny Qwen3-MoE trained from scratch: expert-cache hit rate vs perplexity.

Trains (or reuses the cached checkpoint of) a Qwen3-MoE-architecture LM on GSM8K train text, then
replays held-out GSM8K test text at batch size 1 (decode, and prefill separately) for plain top-k
with LRU / LRU+hysteresis / Belady caches and for the token router at λ ∈ {0, 0.05, 0.1, 0.2, 0.4}
× cache sizes {2k/E, 25 %, 50 %} of E. Expert caches are simulated (counting mode).

Run: ``python benchmarks/token_router.py [--data ../shared/data] [--max-minutes 12] [--tokens 2000]``
Writes ``benchmarks/out/token_router.json`` and ``benchmarks/out/token_router.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from moe_agents.token_router.bench import evaluate_token_router, plot_token_router, train_tiny_moe

OUT = Path(__file__).parent / "out"


def render(report: dict[str, Any], console: Console) -> None:
    """Prints the report's tables: per mode the cache runs, then the overhead and the targets."""
    m = report["model"]
    training = m.get("training", {})
    console.print(
        f"tiny Qwen3-MoE: {m['layers']} layers, E={m['experts']}, k={m['top_k']}, hidden {m['hidden']}; "
        f"trained {training.get('steps_done', '?')} steps in {training.get('minutes', 0.0):.1f} min, "
        f"final train loss {training.get('final_loss', 0.0):.3f} nats/byte; held-out: "
        f"{report['settings']['tokens']} tokens of {report['settings']['documents']} GSM8K test texts"
    )
    for mode in ("decode", "prefill"):
        if mode not in report:
            continue
        r = report[mode]
        table = Table(title=f"{mode}: plain top-k PPL {r['plain_ppl']:.4f} (byte level)")
        for col in (
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
        ):
            table.add_column(col, justify="left" if col in ("router", "cache") else "right")
        for cap in report["capacities"]:
            plain = r["plain"][str(cap)]
            for policy in ("lru", "lru+hysteresis"):
                row = plain[policy]
                table.add_row(
                    str(cap),
                    "plain top-k",
                    policy,
                    f"{row['hit_rate']:.3f}",
                    "0",
                    f"{row['churn']:.3f}",
                    f"{row['repicks_per_token_layer']:.3f}",
                    f"{row['load_entropy']:.3f}",
                    f"{row['max_vio']:.2f}",
                    f"{row['dead_experts_per_layer']:.2f}",
                )
            table.add_row(
                str(cap),
                "plain top-k",
                "belady",
                f"{plain['belady']['hit_rate']:.3f}",
                "0",
                "",
                "",
                "",
                "",
                "",
            )
            for lam, row in r["ours"][str(cap)].items():
                table.add_row(
                    str(cap),
                    f"ours λ={lam}",
                    "lru",
                    f"{row['hit_rate']:.3f}",
                    f"{row['delta_ppl_pct']:+.2f}",
                    f"{row['churn']:.3f}",
                    f"{row['repicks_per_token_layer']:.3f}",
                    f"{row['load_entropy']:.3f}",
                    f"{row['max_vio']:.2f}",
                    f"{row['dead_experts_per_layer']:.2f}",
                )
            table.add_section()
        console.print(table)
    o = report["overhead"]
    table = Table(title=f"router cost per layer-token (decode, one token; ours λ={o['lambda']})")
    for col in (
        "plain router µs",
        "patched neutral µs",
        "ours µs",
        "selection µs",
        "% MoE block",
        "ours − unpatched µs",
        "% MoE block ",
        "MoE block µs",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        f"{o['plain_router_us']:.1f}",
        f"{o['neutral_router_us']:.1f}",
        f"{o['ours_router_us']:.1f}",
        f"{o['selection_us']:.1f}",
        f"{o['selection_pct_of_moe_block']:.1f}",
        f"{o['added_vs_unpatched_us']:.1f}",
        f"{o['added_vs_unpatched_pct_of_moe_block']:.1f}",
        f"{o['moe_block_us']:.1f}",
    )
    console.print(table)
    t = report["targets"]
    if t:
        table = Table(title=f"targets at C = 2k = {t['capacity']} ({t['mode']}, vs plain top-k + LRU)")
        for col in (
            "λ",
            "hit-rate gain (≥ 15 pts)",
            "ΔPPL % (≤ 1)",
            "entropy ratio (≥ 0.9)",
            "dead/layer over plain (≤ 2)",
            "all",
        ):
            table.add_column(col, justify="right")

        def cell(c: dict[str, Any]) -> str:
            return f"{c['value']:.2f} {'met' if c['met'] else 'NOT met'}"

        for lam, c in t["per_lambda"].items():
            table.add_row(
                lam,
                cell(c["hit_rate_gain_points"]),
                cell(c["delta_ppl_pct"]),
                cell(c["entropy_ratio"]),
                cell(c["dead_experts_per_layer_over_plain"]),
                "met" if c["all_met"] else "NOT met",
            )
        console.print(table)
        ov = t.get("overhead")
        if ov:
            console.print(
                f"selection overhead target (≤ 5 % of MoE block): {ov['value']:.1f} % — "
                f"{'met' if ov['met'] else 'NOT met'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--max-minutes", type=float, default=12.0, help="training wall-time cap")
    parser.add_argument("--tokens", type=int, default=2000, help="held-out tokens replayed per setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--trust-max", type=float, default=0.0, help="bound of the loss-calibrated trust bias (0: off)"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
    console = Console(width=160)
    checkpoint = train_tiny_moe(
        args.data, args.out / "checkpoints", seed=args.seed, max_minutes=args.max_minutes
    )
    report = evaluate_token_router(checkpoint, args.data, tokens=args.tokens, trust_max=args.trust_max)
    report["command"] = (
        f"python benchmarks/token_router.py --data {args.data} --max-minutes {args.max_minutes} "
        f"--tokens {args.tokens} --trust-max {args.trust_max}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "token_router.json").write_text(json.dumps(report, indent=2))
    png = plot_token_router(report, args.out / "token_router.png")
    render(report, console)
    offload = report.get("offload")
    if offload:
        console.print(f"real offload at C={offload.get('capacity')}, λ={offload.get('lambda')}: ", end="")
        console.print(
            ", ".join(
                f"{name} {run['tokens_per_s']:.0f} tok/s"
                for name, run in offload.items()
                if isinstance(run, dict) and "tokens_per_s" in run
            )
        )
    console.print(f"wrote {args.out / 'token_router.json'} and {png}")


if __name__ == "__main__":
    main()
