"""Load and faults: thousands of concurrent requests against failing, slow and hanging experts.

Four experts answer through ``FunctionBackend``s (test doubles standing in for models) that sleep
a random 10–200 ms, raise in 10 % of calls (half of those retryable "429"s, half plain errors),
hang past the expert's timeout in 5 %, and one expert (coding) fails every call during a window of
the run. Each backend sits behind the default failure handling (retries with backoff for retryable
errors, a circuit breaker). Every request must end in a ``Result`` or a typed ``MoEError``; a
request that ends any other way, or not at all, is *lost* (goal 0). After the burst, no task may be
left running (goal 0).

Scenarios, side by side in one run:
- ``open``: no admission limit, every request is processed;
- ``bounded``: ``max_concurrency`` and ``max_queue`` set: the excess fails fast with ``Overloaded``.
Then a soak of sequential requests measures memory growth (tracemalloc, after ``gc.collect()``;
the test doubles' own call records are cleared first, since they are not the product).

Run: ``python benchmarks/load.py [--requests 2000] [--soak 20000] [--seed 0]``
Writes ``benchmarks/out/load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import resource
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog
from prompts import PROMPTS  # this folder: the requests every benchmark sends
from rich.console import Console
from rich.table import Table

from moe_agents import ExpertPolicy, Pipeline, Router, RouterConfig
from moe_agents.errors import BackendError, MoEError
from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, ReasoningExpert
from moe_agents.reliability import BreakerPolicy, GuardedBackend, RetryPolicy
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message, Result

OUT = Path(__file__).parent / "out"
TIMEOUT_S = 0.5


class Faults:
    """Random latency, errors and hangs; the coding backend is down during ``window``."""

    def __init__(self, seed: int, window: tuple[float, float] | None) -> None:
        self.rng = random.Random(seed)
        self.window = window
        self.start = time.monotonic()

    def backend(self, name: str, *, faults: bool) -> GuardedBackend:
        async def reply(messages: Sequence[Message]) -> str:
            now = time.monotonic() - self.start
            if faults and name == "coding" and self.window and self.window[0] <= now < self.window[1]:
                raise BackendError(f"{name}: service down")
            if not faults:
                return "ok"
            await anyio.sleep(self.rng.uniform(0.010, 0.200))
            roll = self.rng.random()
            if roll < 0.05:
                raise BackendError(f"{name}: HTTP 429 rate limited", retryable=True)
            if roll < 0.10:
                raise BackendError(f"{name}: HTTP 400 bad request")
            if roll < 0.15:
                await anyio.sleep(TIMEOUT_S * 20)  # hangs past the expert's timeout
            return f"{name} answers"

        return GuardedBackend(
            FunctionBackend(reply, name=name),
            retry=RetryPolicy(attempts=2, initial_s=0.02, max_s=0.1, jitter_s=0.02),
            breaker=BreakerPolicy(failures=8, cooldown_s=0.5),
        )


def build(faults: Faults, *, fault_free: bool = False, **limits: Any) -> Pipeline:
    kinds = {"coding": CodingExpert, "reasoning": ReasoningExpert, "knowledge": KnowledgeExpert}
    kinds["epistemic"] = EpistemicExpert
    experts = [
        cls(
            name,
            backends=[faults.backend(name, faults=not fault_free)],
            policy=ExpertPolicy(max_load=10_000, timeout_s=TIMEOUT_S),
        )
        for name, cls in kinds.items()
    ]
    return Pipeline(experts, router=Router(RouterConfig(top_k=1), encoder=HashingEncoder()), **limits)


async def burst(pipeline: Pipeline, n: int) -> dict[str, Any]:
    """``n`` concurrent requests; how each ended, latency, fallbacks, tasks left behind."""
    outcomes: list[str | None] = [None] * n
    latency: list[float] = []
    fallbacks = 0
    await pipeline.route(PROMPTS[0])  # fit the gate before the clock starts
    tasks_before = len(asyncio.all_tasks())

    async def one(i: int) -> None:
        nonlocal fallbacks
        start = time.perf_counter()
        try:
            result = await pipeline.run(PROMPTS[i % len(PROMPTS)])
        except MoEError as exc:
            outcomes[i] = type(exc).__name__
        except Exception as exc:  # an untyped failure counts as lost
            outcomes[i] = f"LOST:{type(exc).__name__}"
        else:
            outcomes[i] = "answered"
            if isinstance(result, Result) and result.answer.expert not in result.selection.experts:
                fallbacks += 1
        latency.append(time.perf_counter() - start)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    wall = time.perf_counter() - start
    await anyio.sleep(0.05)
    counts = Counter(o if o is not None else "LOST:never finished" for o in outcomes)
    lost = sum(v for k, v in counts.items() if k.startswith("LOST"))
    lat = sorted(latency)
    return {
        "requests": n,
        "answered": counts.get("answered", 0),
        "typed_errors": {k: v for k, v in counts.items() if k != "answered" and not k.startswith("LOST")},
        "lost": lost,
        "fallbacks": fallbacks,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        "wall_s": wall,
        "tasks_left": len(asyncio.all_tasks()) - tasks_before,
    }


async def soak(n: int, seed: int) -> dict[str, Any]:
    """``n`` sequential requests on fault-free backends; traced Python memory at checkpoints."""
    pipeline = build(Faults(seed, None), fault_free=True)
    await pipeline.run(PROMPTS[0])
    tracemalloc.start()
    marks: list[tuple[int, float]] = []
    start = time.perf_counter()
    for i in range(1, n + 1):
        await pipeline.run(PROMPTS[i % len(PROMPTS)])
        if i % max(n // 10, 1) == 0:
            for backend in pipeline.backends:  # the test double's own record of calls is not the product
                inner = getattr(backend, "inner", backend)
                if isinstance(inner, FunctionBackend):
                    inner.calls.clear()
            gc.collect()
            marks.append((i, tracemalloc.get_traced_memory()[0] / 2**20))
    tracemalloc.stop()
    first, last = marks[0][1], marks[-1][1]
    return {
        "requests": n,
        "seconds": time.perf_counter() - start,
        "traced_mb": [{"after": i, "mb": round(mb, 3)} for i, mb in marks],
        "growth_mb_first_to_last_checkpoint": last - first,
        "results_kept": len(pipeline._results),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"requests": args.requests, "seed": args.seed, "timeout_s": TIMEOUT_S}
    faults = Faults(args.seed, window=(0.2, 0.8))
    report["open"] = await burst(build(faults), args.requests)
    faults = Faults(args.seed + 1, window=(0.2, 0.8))
    report["bounded"] = await burst(
        build(faults, max_concurrency=args.max_concurrency, max_queue=args.max_queue), args.requests
    )
    report["bounded"]["max_concurrency"], report["bounded"]["max_queue"] = (
        args.max_concurrency,
        args.max_queue,
    )
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["soak"] = await soak(args.soak, args.seed)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--soak", type=int, default=20_000)
    parser.add_argument("--max-concurrency", type=int, default=500)
    parser.add_argument("--max-queue", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    report = anyio.run(main_async, args)

    console = Console(width=150)
    table = Table(title=f"{args.requests} concurrent requests with faults (expert timeout {TIMEOUT_S} s)")
    for col in (
        "scenario",
        "answered",
        "typed errors",
        "lost (goal 0)",
        "fallbacks",
        "p50 ms",
        "p99 ms",
        "wall s",
        "tasks left (goal 0)",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "typed errors") else "right")
    for name in ("open", "bounded"):
        r = report[name]
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["typed_errors"].items())) or "—"
        table.add_row(
            name,
            str(r["answered"]),
            errors,
            str(r["lost"]),
            str(r["fallbacks"]),
            f"{r['p50_ms']:.0f}",
            f"{r['p99_ms']:.0f}",
            f"{r['wall_s']:.1f}",
            str(r["tasks_left"]),
        )
    console.print(table)
    s = report["soak"]
    first, last = s["traced_mb"][0], s["traced_mb"][-1]
    console.print(
        f"peak RSS {report['peak_rss_mb']:.0f} MB; soak of {s['requests']} sequential requests in "
        f"{s['seconds']:.0f} s: traced memory {first['mb']:.2f} MB after {first['after']} "
        f"→ {last['mb']:.2f} MB after {last['after']} "
        f"(growth {s['growth_mb_first_to_last_checkpoint']:+.2f} MB; results kept: {s['results_kept']})"
    )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(report, indent=2))
    console.print(f"wrote {OUT / 'load.json'}")


if __name__ == "__main__":
    main()
