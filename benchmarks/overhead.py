"""Pipeline overhead: moe-agents vs a bare anyio fan-out over the same backends.

Every backend is a ``FunctionBackend`` with a fixed latency (default 50 ms), so any time beyond
that is the cost of routing, bookkeeping and aggregation. Both contenders run the same number of
requests concurrently in the same process; the overhead reported is the difference of their
latency percentiles. A sequential pass (one request at a time) gives per-request differences.
Process CPU is counted per pass too: the CPU overhead per request is the moe-agents pass's CPU
minus the bare pass's, divided by the requests (with ``--encoder hashing`` no encoder cost is in
it; the goal is ≤ 0.3 ms).

Run: ``python benchmarks/overhead.py [--requests 1000] [--latency-ms 50] [--encoder hashing|minilm]``
Writes ``benchmarks/results/overhead.json`` and ``benchmarks/results/overhead.png``.

``--mode litellm`` measures the peer instead: the same concurrent calls through bare
``litellm.acompletion``, litellm's ``Router`` and moe-agents on ``LiteLLMBackend``, all on mock
responses (``benchmarks/litellm_peer.py``); it writes ``overhead_litellm.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import numpy as np
import structlog
from prompts import PROMPTS  # this folder: the requests every benchmark sends

from moe_agents import ExpertPolicy, Pipeline, Router, RouterConfig
from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, ReasoningExpert
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message

OUT = Path(__file__).parent / "results"


def reply(messages: Sequence[Message]) -> str:
    return "An answer of typical length, a few dozen words, the same for every expert. " * 3


def build(latency_s: float, encoder: str, top_k: int) -> tuple[Pipeline, list[FunctionBackend]]:
    backends = [FunctionBackend(reply, name=f"b{i}", latency_s=latency_s) for i in range(4)]
    kinds = (CodingExpert, ReasoningExpert, KnowledgeExpert, EpistemicExpert)
    policy = ExpertPolicy(max_load=100_000)
    experts = [cls(backends=[b], policy=policy) for cls, b in zip(kinds, backends, strict=True)]
    enc = HashingEncoder() if encoder == "hashing" else None  # None: the bundled MiniLM
    pipeline = Pipeline(experts, router=Router(RouterConfig(top_k=top_k), encoder=enc))
    return pipeline, backends


async def timed_batch(
    n: int, call: Callable[[int], Awaitable[object]], concurrent: bool
) -> tuple[list[float], float]:
    """Latency in seconds of each of ``n`` calls, run all at once or one after another, and the
    process CPU seconds the batch took."""
    out = [0.0] * n
    cpu = time.process_time()

    async def one(i: int) -> None:
        t = time.perf_counter()
        await call(i)
        out[i] = time.perf_counter() - t

    if concurrent:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
    else:
        for i in range(n):
            await one(i)
    return out, time.process_time() - cpu


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def measure(args: argparse.Namespace) -> dict[str, object]:
    latency = args.latency_ms / 1000
    pipeline, backends = build(latency, args.encoder, args.top_k)
    messages = [{"role": "user", "content": "x"}]

    async def bare(i: int) -> None:
        # what a user would write by hand: call top_k backends concurrently, keep the first answer
        async with anyio.create_task_group() as tg:
            for b in backends[: args.top_k]:
                tg.start_soon(lambda b=b: b.complete(messages))

    def moe(tag: str) -> Callable[[int], Awaitable[object]]:
        async def call(i: int) -> None:  # distinct texts: no embedding-cache hits
            await pipeline.run(f"{PROMPTS[i % len(PROMPTS)]} ({tag} #{i})")

        return call

    async with pipeline:
        await timed_batch(20, moe("warm-up"), concurrent=False)  # encoder, centroids
        results: dict[str, object] = {}
        for mode, n, concurrent in (
            ("concurrent", args.requests, True),
            ("sequential", args.sequential, False),
        ):
            b, b_cpu = await timed_batch(n, bare, concurrent)
            m, m_cpu = await timed_batch(n, moe(mode), concurrent)
            per_request = [(mi - bi) * 1000 for mi, bi in zip(m, b, strict=True)]
            results[mode] = {
                "requests": n,
                "cpu_ms_per_request": {
                    "bare": b_cpu / n * 1000,
                    "moe": m_cpu / n * 1000,
                    "overhead": (m_cpu - b_cpu) / n * 1000,
                },
                "bare_ms": {"p50": pct(b, 50) * 1000, "p99": pct(b, 99) * 1000},
                "moe_ms": {"p50": pct(m, 50) * 1000, "p99": pct(m, 99) * 1000},
                "overhead_ms": {
                    "p50": (pct(m, 50) - pct(b, 50)) * 1000,
                    "p99": (pct(m, 99) - pct(b, 99)) * 1000,
                },
                "paired_overhead_ms": {"p50": pct(per_request, 50), "p99": pct(per_request, 99)}
                if not concurrent
                else None,
                "bare_latencies_ms": [x * 1000 for x in b],
                "moe_latencies_ms": [x * 1000 for x in m],
            }
    return results


def import_time(runs: int = 5) -> dict[str, float]:
    """Median wall time of ``import moe_agents`` in a fresh interpreter, minus a bare interpreter."""

    def run(code: str) -> float:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    bare = run("pass")
    full = run("import moe_agents")
    return {"python_s": bare, "python_plus_import_s": full, "import_s": full - bare}


def plot(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, mode in zip(axes[:2], ("concurrent", "sequential"), strict=True):
        r = results[mode]
        assert isinstance(r, dict)
        ax.hist(r["bare_latencies_ms"], bins=50, alpha=0.6, label="bare anyio fan-out")
        ax.hist(r["moe_latencies_ms"], bins=50, alpha=0.6, label="moe-agents pipeline")
        ax.set_title(f"{mode}: {r['requests']} requests")
        ax.set_xlabel("latency (ms)")
        ax.legend()
    ax = axes[2]
    overhead = [results[m]["cpu_ms_per_request"]["overhead"] for m in ("concurrent", "sequential")]  # type: ignore[index]
    ax.bar(["concurrent", "sequential"], overhead, color="tab:orange")
    ax.axhline(0.3, color="gray", linestyle="--", label="goal 0.3 ms")
    ax.set_ylabel("CPU overhead per request (ms)")
    ax.set_title("moe-agents CPU minus bare fan-out CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="concurrent requests")
    parser.add_argument("--sequential", type=int, default=200, help="requests in the sequential pass")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--encoder", choices=["hashing", "minilm"], default="minilm")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--rounds", type=int, default=3, help="litellm mode: interleaved rounds (median)")
    parser.add_argument(
        "--mode",
        choices=["fanout", "litellm"],
        default="fanout",
        help="fanout: vs a bare anyio fan-out; litellm: vs bare litellm and its Router (litellm_peer.py)",
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    if args.mode == "litellm":
        from litellm_peer import main as litellm_main

        litellm_main(args.requests, args.out, args.rounds)
        return

    results = anyio.run(measure, args)
    imp = import_time()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "import": imp,
        **{
            mode: {k: v for k, v in r.items() if not k.endswith("latencies_ms")}  # type: ignore[union-attr]
            for mode, r in results.items()
        },
    }
    (args.out / "overhead.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "overhead.png")

    print(f"backend latency {args.latency_ms:.0f} ms, top_k={args.top_k}, encoder={args.encoder}")
    print(
        f"{'mode':<11} {'n':>5} {'bare p50':>9} {'moe p50':>9} {'bare p99':>9} {'moe p99':>9} "
        f"{'ovh p50':>8} {'ovh p99':>8} {'ovh CPU/req':>12}"
    )
    for mode in ("concurrent", "sequential"):
        r = summary[mode]
        print(
            f"{mode:<11} {r['requests']:>5} {r['bare_ms']['p50']:>9.2f} {r['moe_ms']['p50']:>9.2f} "
            f"{r['bare_ms']['p99']:>9.2f} {r['moe_ms']['p99']:>9.2f} "
            f"{r['overhead_ms']['p50']:>8.2f} {r['overhead_ms']['p99']:>8.2f} "
            f"{r['cpu_ms_per_request']['overhead']:>9.3f} ms"
        )
    cpu = summary["concurrent"]["cpu_ms_per_request"]["overhead"]
    print(f"CPU overhead per request, concurrent: {cpu:.3f} ms (goal <= 0.3 ms with --encoder hashing)")
    paired = summary["sequential"]["paired_overhead_ms"]
    print(
        f"sequential paired per-request overhead: p50 {paired['p50']:.2f} ms, p99 {paired['p99']:.2f} ms "
        f"(goal: p50 <= 1 ms)"
    )
    import_ms, bare_ms = imp["import_s"] * 1000, imp["python_s"] * 1000
    print(f"import moe_agents: {import_ms:.0f} ms (goal <= 500 ms; bare python {bare_ms:.0f} ms)")
    print(f"wrote {args.out / 'overhead.json'} and {args.out / 'overhead.png'}")


if __name__ == "__main__":
    main()
