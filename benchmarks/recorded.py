"""Trust-based selection on recorded answers of real LLMs (MMLU, GSM8K), against the issue's goals.

The same experiments as ``moe-agents eval recorded`` (cost/quality routing, online trust, aggregation,
residency, each beside its baselines), with the goals marked: 95 % of GPT-4's accuracy with at most
``STRONG_SHARE_GOALS`` of the calls going to GPT-4, and trust-weighted voting at least as accurate as
the best single model.

Run: ``python benchmarks/recorded.py [--data DIR] [--limit N]`` (``--data`` defaults to
``$MOE_AGENTS_EVAL_DATA``, else ``../shared/data``).
Writes ``benchmarks/out/recorded/report.json`` and its PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console

from moe_agents.eval_data import EVAL_DATA_ENV
from moe_agents.evaluation.recorded_eval import RecordedEvalConfig, evaluate_recorded, plot_recorded
from moe_agents.evaluation.report import render_recorded
from moe_agents.routing.encoder import bundled_encoder

OUT = Path(__file__).parent / "out" / "recorded"
DATA = Path(os.environ.get(EVAL_DATA_ENV, "../shared/data"))

STRONG_SHARE_GOALS = {"mmlu": 0.50, "gsm8k": 0.60}
"""Per data set, the most GPT-4 calls (a share) with which the trust router should reach 95 % of
GPT-4's accuracy."""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--limit", type=int, default=None, help="questions per MMLU subject and of GSM8K")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console(width=140)
    config = RecordedEvalConfig(data_dir=args.data, seed=args.seed, limit=args.limit)
    report = evaluate_recorded(config, bundled_encoder(), progress=console.print)
    for table in render_recorded(report, strong_share_goals=STRONG_SHARE_GOALS):
        console.print(table)
    aggregation = report["aggregation"]
    voting, best = aggregation["methods"]["trust_voting"], aggregation["best_single"]
    for grader in ("recorded", "same_grader"):
        met = voting >= best[grader]
        console.print(
            f"goal: trust voting >= best single ({grader.replace('_', ' ')}): {'met' if met else 'NOT met'}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "report.json"
    path.write_text(json.dumps(report, indent=2))
    paths = plot_recorded(report, args.out)
    console.print(f"wrote {path} and {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    main()
