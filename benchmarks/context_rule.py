"""Context only where it helps: fits the similarity threshold of the recent-turns rule and measures it.

Routes the hand-written conversations (fit set) and MT-Bench two-turn conversations (measurement
set, never fitted on) with the offline default pipeline's router and momentum, and reports, per
rule, the share of follow-ups given their previous turn (recall), of new topics not given it
(specificity) and their mean. See ``moe_agents.evaluation.context_rule``.

Run: ``python benchmarks/context_rule.py [--config PATH] [--data ../shared/data] [--negatives 5]``
Writes ``benchmarks/out/context_rule.json`` and ``benchmarks/out/context_rule.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anyio
import structlog
from rich.console import Console
from rich.table import Table

from moe_agents.config import default_config_path, load_pipeline
from moe_agents.continuity import THRESHOLD
from moe_agents.evaluation.context_rule import evaluate_context_rule

OUT = Path(__file__).parent / "out"


def _plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    curve = report["curve"]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(curve["threshold"], curve["fit"], label="fit: hand-written conversations")
    ax.plot(curve["threshold"], curve["test"], label="test: MT-Bench")
    ax.axvline(report["fitted_threshold"], color="grey", linestyle="--", label="fitted threshold")
    ax.set_xlabel("similarity threshold (same expert or similar)")
    ax.set_ylabel("balanced accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--config", type=Path, default=None, help="pipeline YAML (default: the offline default)"
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--negatives", type=int, default=5, help="new-topic pairs per MT-Bench conversation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    console = Console(width=160)
    pipeline = load_pipeline(args.config or default_config_path())

    async def go() -> dict[str, Any]:
        return await evaluate_context_rule(
            pipeline.router,
            list(pipeline.experts.values()),
            args.data,
            negatives=args.negatives,
            seed=args.seed,
            shipped=THRESHOLD,
        )

    report = anyio.run(go)
    fit, test = report["fit_set"], report["test_set"]
    table = Table(
        title=f"recent turns given to an expert: fit on {fit['pairs']} hand-written pairs "
        f"({fit['continues']} follow-ups), measured on {test['pairs']} MT-Bench pairs "
        f"({test['continues']} follow-ups)"
    )
    table.add_column("rule")
    for col in (
        "fit recall",
        "fit specificity",
        "fit bal. acc.",
        "MT recall",
        "MT specificity",
        "MT bal. acc.",
    ):
        table.add_column(col, justify="right")
    for name, row in report["settings"].items():
        cells = [
            f"{row[s][k]:.1%}"
            for s in ("fit", "test")
            for k in ("recall", "specificity", "balanced_accuracy")
        ]
        table.add_row(name, *cells)
    console.print(table)
    for name, cv in report["cross_validated"].items():
        console.print(
            f"leave-one-conversation-out on the fit set, {name}: recall {cv['recall']:.1%}, "
            f"specificity {cv['specificity']:.1%}, balanced accuracy {cv['balanced_accuracy']:.1%}"
        )
    rate = report["same_expert_rate"]
    console.print(
        "same expert routed for both turns: fit {:.1%} of follow-ups, {:.1%} of new topics; "
        "MT-Bench {:.1%} / {:.1%}".format(
            rate["fit"]["continues"],
            rate["fit"]["new topic"],
            rate["test"]["continues"],
            rate["test"]["new topic"],
        )
    )
    for floor, m in report["memory_floor"].items():
        console.print(
            f"memories, similarity floor {floor}: {m['recalled']:.1%} of {m['exchanges']} MT-Bench exchanges "
            f"recalled for their follow-up, {m['kept_out']:.1%} kept out for other conversations' questions"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path, png = args.out / "context_rule.json", args.out / "context_rule.png"
    path.write_text(json.dumps(report, indent=2))
    _plot(report, png)
    console.print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
