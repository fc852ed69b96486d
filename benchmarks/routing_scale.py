"""Routing cost as the number of experts grows: 5 vs 1,000 experts with synthetic exemplars.

Each synthetic expert gets 5 exemplars built from its own topic words; the gate (MLP by default)
is fitted on them. Routing is timed per query, one query at a time, two ways in the same run:
``cold`` (every query is new, so the encoder runs: what a user sees) and ``warm`` (the query
embedding comes from the cache: the router's own cost, which is what grows with the experts).

Run: ``python benchmarks/routing_scale.py [--experts 5 1000] [--queries 200] [--gate mlp]``
Writes ``benchmarks/out/routing_scale.json`` and ``benchmarks/out/routing_scale.png``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import anyio
import numpy as np
import structlog

from moe_agents import GateConfig, LLMExpert, Query, Router, RouterConfig
from moe_agents.experts.base import Signal

OUT = Path(__file__).parent / "out"
WORDS = [
    "river",
    "mountain",
    "engine",
    "garden",
    "violin",
    "planet",
    "harbor",
    "lantern",
    "meadow",
    "circuit",
    "canyon",
    "orchard",
    "glacier",
    "compass",
    "falcon",
    "quartz",
    "ribbon",
    "saddle",
    "thunder",
    "velvet",
    "anchor",
    "biscuit",
    "candle",
    "dolphin",
    "ember",
    "fossil",
    "galaxy",
    "hammock",
    "island",
    "jungle",
    "kettle",
    "ladder",
    "magnet",
    "nectar",
    "oyster",
    "pepper",
    "quiver",
    "rocket",
    "spruce",
    "tunnel",
    "umbrella",
    "valley",
    "walrus",
    "yogurt",
    "zephyr",
    "acorn",
    "bamboo",
    "cactus",
    "desert",
    "eagle",
    "feather",
    "granite",
]


def synthetic_experts(n: int, seed: int = 0) -> list[LLMExpert]:
    """``n`` experts, each with 5 exemplars about its own three topic words."""
    rng = random.Random(seed)
    experts = []
    for i in range(n):
        topic = rng.sample(WORDS, 3)
        exemplars = tuple(
            f"{verb} the {topic[0]} and the {topic[1]} near the {topic[2]} (case {i}-{j})"
            for j, verb in enumerate(("describe", "explain", "compare", "summarise", "list facts about"))
        )
        expert = LLMExpert(f"e{i}", exemplars=exemplars)
        expert.signals = (Signal(rf"\b{topic[0]}\b", 0.5),)  # type: ignore[misc]
        experts.append(expert)
    return experts


async def time_routes(router: Router, experts: list[LLMExpert], queries: list[str]) -> list[float]:
    out = []
    for q in queries:
        t = time.perf_counter()
        await router.route(Query(q), experts)
        out.append(time.perf_counter() - t)
    return out


async def measure(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rng = random.Random(1)
    results: dict[str, dict[str, float]] = {}
    from moe_agents.routing import bundled_encoder

    await anyio.to_thread.run_sync(bundled_encoder().encode, ["load the encoder before timing anything"])
    for n in args.experts:
        experts = synthetic_experts(n)
        router = Router(
            RouterConfig(gate=GateConfig(kind=args.gate), gate_cache_dir="", batch_window_s=0),
        )
        t = time.perf_counter()
        await router.prepare(experts)
        fit_s = time.perf_counter() - t
        queries = [
            f"tell me about the {' and the '.join(rng.sample(WORDS, 2))} #{n}-{i}"
            for i in range(args.queries)
        ]
        await time_routes(router, experts, queries[:10])  # warm-up
        cold = await time_routes(router, experts, queries[10:])
        warm = await time_routes(router, experts, queries[10:])  # embeddings now cached
        results[str(n)] = {
            "experts": n,
            "fit_s": fit_s,
            "cold_p50_ms": float(np.percentile(cold, 50) * 1000),
            "cold_p99_ms": float(np.percentile(cold, 99) * 1000),
            "warm_p50_ms": float(np.percentile(warm, 50) * 1000),
            "warm_p99_ms": float(np.percentile(warm, 99) * 1000),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[5, 1000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--gate", choices=["mlp", "centroid", "knn"], default="mlp")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    results = anyio.run(measure, args)
    base = results[str(args.experts[0])]
    print(f"gate={args.gate}, {args.queries - 10} timed queries per size, one at a time")
    print(
        f"{'experts':>8} {'fit s':>7} {'cold p50':>9} {'cold p99':>9} {'warm p50':>9} {'warm p99':>9} "
        f"{'cold x':>7} {'warm x':>7}"
    )
    for r in results.values():
        print(
            f"{r['experts']:>8} {r['fit_s']:>7.1f} {r['cold_p50_ms']:>9.2f} {r['cold_p99_ms']:>9.2f} "
            f"{r['warm_p50_ms']:>9.2f} {r['warm_p99_ms']:>9.2f} "
            f"{r['cold_p50_ms'] / base['cold_p50_ms']:>7.2f} {r['warm_p50_ms'] / base['warm_p50_ms']:>7.2f}"
        )
    print("goal: cold p50 with the most experts <= 2x cold p50 with the fewest")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing_scale.json").write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["experts"] for r in results.values()]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [r["cold_p50_ms"] for r in results.values()], "o-", label="cold (encoder runs) p50")
    ax.plot(sizes, [r["warm_p50_ms"] for r in results.values()], "s-", label="warm (cached embedding) p50")
    ax.set_xscale("log")
    ax.set_xlabel("experts")
    ax.set_ylabel("routing time per query (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "routing_scale.png", dpi=110)
    print(f"wrote {args.out / 'routing_scale.json'} and {args.out / 'routing_scale.png'}")


if __name__ == "__main__":
    main()
