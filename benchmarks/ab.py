"""A/B tests: does the split hold, and does the report find a real difference (and only a real one)?

Simulated traffic through ``ABTracker``: 10,000 requests per split fraction, with and without
sticky session keys; then outcome scores drawn as Bernoulli(0.6) for the control and Bernoulli(0.7)
for the treatment (a real difference of +0.10), and as Bernoulli(0.6) for both (none), repeated
over seeds to count how often the 95 % interval covers the true difference.

Run: ``python benchmarks/ab.py [--requests 10000] [--repeats 200]``; writes ``benchmarks/out/ab.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from moe_agents.management import ABTest, ABTracker

OUT = Path(__file__).parent / "out"


def split(fraction: float, requests: int, sticky: bool, seed: int) -> float:
    tracker = ABTracker([ABTest("t", "control", "treatment", fraction=fraction, seed=seed)])
    served = [tracker.assign("t", f"session-{i}" if sticky else None) for i in range(requests)]
    return served.count("treatment") / requests


def detect(p_control: float, p_treatment: float, requests: int, seed: int) -> dict[str, Any]:
    rng = random.Random(f"outcomes-{seed}")  # independent of the assignment draws
    tracker = ABTracker([ABTest("t", "control", "treatment", fraction=0.5, seed=seed)])
    for _ in range(requests):
        variant = tracker.assign("t")
        p = p_treatment if variant == "treatment" else p_control
        tracker.record("t", variant, 1.0 if rng.random() < p else 0.0)
    report = tracker.report("t")
    assert report.ci is not None
    truth = p_treatment - p_control
    return {"covers_truth": report.ci[0] <= truth <= report.ci[1], "significant": report.significant}


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "requests": args.requests,
        "repeats": args.repeats,
        "splits": [],
        "detection": {},
    }
    console = Console(width=120)
    table = Table(title=f"A/B split over {args.requests} simulated requests")
    for col in ("fraction", "sticky keys", "observed", "error"):
        table.add_column(col, justify="right")
    for fraction in (0.1, 0.2, 0.5):
        for sticky in (False, True):
            observed = split(fraction, args.requests, sticky, seed=0)
            report["splits"].append({"fraction": fraction, "sticky": sticky, "observed": observed})
            table.add_row(
                f"{fraction:.2f}", "yes" if sticky else "no", f"{observed:.4f}", f"{observed - fraction:+.4f}"
            )
    console.print(table)
    det = Table(title=f"difference detection, {args.repeats} seeds × {args.requests} requests, 95 % interval")
    for col in ("scenario", "interval covers the truth", "called significant"):
        det.add_column(col, justify="right")
    for name, (pc, pt) in {"+0.10 (0.6 vs 0.7)": (0.6, 0.7), "none (0.6 vs 0.6)": (0.6, 0.6)}.items():
        runs = [detect(pc, pt, args.requests, seed) for seed in range(args.repeats)]
        covers = sum(r["covers_truth"] for r in runs) / len(runs)
        significant = sum(r["significant"] for r in runs) / len(runs)
        report["detection"][name] = {"covers_truth": covers, "significant": significant}
        det.add_row(name, f"{covers:.1%}", f"{significant:.1%}")
    console.print(det)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ab.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {OUT / 'ab.json'}")


if __name__ == "__main__":
    main()
