"""Few-shot encoder tuning and cross-validated mixing against today's router, in one run.

Routers, each fitted from scratch into its own empty cache folder on the built-in experts'
exemplars (variant ``exemplars``) and, separately, on the exemplars plus the fit splits of
``routing_fit_set`` (variant ``exemplars+fit``), then scored top-1 on ``routing_test_set`` (test
splits only, never used to fit or choose anything):

- ``baseline``: today's router (``tune: off``, ``gate_weight: 0.6``, calibrated MLP temperature);
- ``cv``: the untuned encoder, gate weight and temperature chosen by cross-validation on the exemplars;
- ``tuned``: the encoder tuned on the exemplars (``tune: on``), weight and temperature by cross-validation;
- ``tuned-0.6``: the tuned encoder with today's gate (weight 0.6, no cross-validation: one tuning only);
- ``auto``: the new default (``tune: auto``): cross-validation also chooses tuned or untuned.

Fit time is wall and CPU (process) time of ``router.fit``; the machine is shared, so wall time is
noisy. Single-query routing latency (embedding cache off) is timed for ``baseline`` and ``auto``
side by side.

Run: ``python benchmarks/routing_tuning.py [--per-label 400] [--variants exemplars exemplars+fit]``
Writes ``benchmarks/results/routing_tuning.json`` and ``benchmarks/results/routing_tuning.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import structlog
from rich.console import Console
from rich.table import Table

from moe_agents import default_config_path, load_pipeline
from moe_agents.evaluation.data import routing_fit_set, routing_test_set
from moe_agents.evaluation.oos import route_all
from moe_agents.routing.router import Router, RouterConfig

OUT = Path(__file__).parent / "results"
ROUTERS: dict[str, dict[str, Any]] = {
    "baseline": {"tune": "off", "gate_weight": 0.6},
    "cv": {"tune": "off", "gate_weight": None},
    "tuned": {"tune": "on", "gate_weight": None},
    "tuned-0.6": {"tune": "on", "gate_weight": 0.6},
    "auto": {"tune": "auto", "gate_weight": None},
}


def _accuracy(pred: list[str], truth: list[str], mask: np.ndarray | None = None) -> float:
    ok = np.array([p == t for p, t in zip(pred, truth, strict=True)])
    return float(ok[mask].mean() if mask is not None else ok.mean())


async def _latency(router: Router, queries: list[Any], experts: list[Any], n: int) -> dict[str, float]:
    fresh = Router(replace(router.config, cache_size=0), encoder=router.encoder, gate=router.gate)
    await fresh.prepare(experts)
    for q in queries[:16]:
        await fresh.route(q, experts)  # warm-up
    times = []
    for q in queries[16 : 16 + n]:
        t = time.perf_counter()
        await fresh.route(q, experts)
        times.append(time.perf_counter() - t)
    return {"p50_ms": float(np.median(times) * 1e3), "p90_ms": float(np.quantile(times, 0.9) * 1e3), "n": n}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pipeline = load_pipeline(default_config_path())
    experts = list(pipeline.experts.values())
    base = pipeline.router
    items = routing_test_set(None, per_label=args.per_label, seed=0)
    queries = [i.query() for i in items]
    truth = [i.label for i in items]
    text_only = np.array([not q.attachments for q in queries])
    labels = sorted(set(truth))
    fit_items = routing_fit_set(None, per_label=200, seed=0)
    report: dict[str, Any] = {"n": len(items), "text_only_n": int(text_only.sum()), "variants": {}}
    for variant in args.variants:
        extra: dict[str, list[str]] = {}
        if variant == "exemplars+fit":
            for item in fit_items:
                extra.setdefault(item.label, []).append(item.text)
        rows: dict[str, Any] = {}
        for name in args.routers:
            with tempfile.TemporaryDirectory() as cache:
                cfg = RouterConfig(**{**ROUTERS[name], "top_k": 1, "gate_cache_dir": cache})
                router = Router(cfg, encoder=base.encoder, rules=base.rules, exemplars=extra)
                wall, cpu = time.perf_counter(), time.process_time()
                fit = await router.fit(experts)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                pred = [sel.experts[0] for sel in await route_all(router, queries, experts)]
                row = {
                    "accuracy": _accuracy(pred, truth),
                    "text_only": _accuracy(pred, truth, text_only),
                    "per_label": {
                        lab: _accuracy(pred, truth, np.array([t == lab for t in truth])) for lab in labels
                    },
                    "fit_wall_s": wall,
                    "fit_cpu_s": cpu,
                    "encoder": router.active_encoder.name,
                    "gate_weight": router.gate_weight,
                    "temperature": fit.temperature,
                    "cv": None if fit.cv is None else {k: v for k, v in fit.cv.items() if k != "scores"},
                    "cv_scores": None if fit.cv is None else fit.cv["scores"],
                }
                if variant == "exemplars" and name != "cv" and args.latency:
                    row["latency"] = await _latency(router, queries, experts, args.latency)
                rows[name] = row
                report["variants"][variant] = rows
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(
                    json.dumps(report, indent=2)
                )  # partial results survive an interrupted run
                print(
                    f"[{variant}] {name}: {row['accuracy']:.3f} (text {row['text_only']:.3f}) "
                    f"fit {wall:.0f} s"
                )
        report["variants"][variant] = rows
    return report


def _render(report: dict[str, Any]) -> None:
    console = Console(width=140)
    for variant, rows in report["variants"].items():
        labels = list(next(iter(rows.values()))["per_label"])
        table = Table(
            "router",
            "top-1",
            "text-only",
            *labels,
            "w",
            "encoder",
            "fit wall s",
            "fit CPU s",
            title=f"gates fitted on: {variant} (test set n={report['n']}, text-only {report['text_only_n']})",
        )
        for name, r in rows.items():
            table.add_row(
                name,
                f"{r['accuracy']:.1%}",
                f"{r['text_only']:.1%}",
                *(f"{r['per_label'][lab]:.1%}" for lab in labels),
                f"{r['gate_weight']:.2f}",
                "tuned" if "-tuned-" in r["encoder"] else "base",
                f"{r['fit_wall_s']:.0f}",
                f"{r['fit_cpu_s']:.0f}",
            )
        console.print(table)
        for name, r in rows.items():
            if "latency" in r:
                console.print(f"{name}: single-query routing p50 {r['latency']['p50_ms']:.1f} ms")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(report["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        rows = report["variants"][variant]
        names = list(rows)
        xs = np.arange(len(names))
        ax.bar(xs - 0.2, [rows[n]["accuracy"] for n in names], 0.4, label="top-1")
        ax.bar(xs + 0.2, [rows[n]["text_only"] for n in names], 0.4, label="text-only")
        ax.set_xticks(xs, names)
        ax.set_ylim(0.5, 1.0)
        ax.axhline(0.9, color="grey", lw=0.8, ls="--")
        ax.set_title(f"fitted on {variant}")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-label", type=int, default=400)
    parser.add_argument("--variants", nargs="+", default=["exemplars", "exemplars+fit"])
    parser.add_argument("--routers", nargs="+", default=list(ROUTERS), choices=list(ROUTERS))
    parser.add_argument("--latency", type=int, default=200, help="single queries timed (0: skip)")
    parser.add_argument("--out", type=Path, default=OUT / "routing_tuning.json")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    result = anyio.run(main, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    _plot(result, args.out.with_suffix(".png"))
    _render(result)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
