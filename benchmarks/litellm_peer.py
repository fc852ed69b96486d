"""The peer in the overhead benchmark: litellm's own Router, on the same mock responses.

The same N concurrent chat calls through bare ``litellm.acompletion``, litellm's ``Router`` (4
deployments, its default simple-shuffle) and a moe-agents ``Pipeline`` of 4 experts on
``LiteLLMBackend`` (top-1, ``HashingEncoder`` so that no encoder cost is counted), all answering
with litellm's ``mock_response``: no network, and every contender pays litellm's own cost once.
Reported per contender: process CPU per request (until the process is idle again, so the logging
litellm does in background tasks after each call counts) and latency percentiles, the median of
``rounds`` interleaved rounds (CPU time on a shared machine drifts by a millisecond or more);
one process.

Run: ``python benchmarks/overhead.py --mode litellm [--requests 1000]`` (this module is its
litellm mode); writes ``benchmarks/results/overhead_litellm.json`` and ``overhead_litellm.png``.
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from prompts import PROMPTS as CHAT_PROMPTS  # this folder
from rich.console import Console
from rich.table import Table

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm's bundled prices: no fetch, no wait
MODEL = "openai/gpt-4o-mini"
ANSWER = "An answer of typical length, a few dozen words, the same for every contender. " * 3
PROMPTS = CHAT_PROMPTS[:4]  # one per deployment/expert


async def settle(window_s: float = 0.05, idle_cpu_s: float = 0.002) -> None:
    """Returns once the process is idle: litellm logs every call (cost, payload) in background
    tasks after the call has returned, and that CPU belongs to the calls. Without waiting for it,
    whichever contender finishes its calls in one burst leaves its logging outside the window."""
    last = time.process_time()
    while True:
        await anyio.sleep(window_s)
        now = time.process_time()
        if now - last < idle_cpu_s:
            return
        last = now


async def _run(n: int, call: Callable[[int], Awaitable[object]]) -> dict[str, float]:
    """CPU per request and latency percentiles of ``n`` concurrent calls."""
    latencies = [0.0] * n

    async def one(i: int) -> None:
        start = time.perf_counter()
        await call(i)
        latencies[i] = time.perf_counter() - start

    gc.collect()  # garbage left by the previous round is not this one's cost
    cpu, wall = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    wall = time.perf_counter() - wall
    await settle()
    cpu = time.process_time() - cpu
    ms = np.asarray(latencies) * 1000
    return {
        "cpu_ms_per_request": cpu / n * 1000,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "wall_s": wall,
    }


async def measure(n: int, rounds: int) -> dict[str, Any]:
    import litellm

    from moe_agents import LiteLLMBackend, Pipeline, Router, RouterConfig
    from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, ReasoningExpert
    from moe_agents.testing import HashingEncoder

    def messages(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (#{i})"}]

    async def bare(i: int) -> None:
        await litellm.acompletion(model=MODEL, messages=messages(i), mock_response=ANSWER, api_key="sk-mock")

    deployments = [
        {
            "model_name": "moe",
            "litellm_params": {"model": MODEL, "api_key": "sk-mock", "mock_response": ANSWER},
        }
        for _ in range(4)
    ]
    router = litellm.Router(model_list=deployments)

    async def peer(i: int) -> None:
        await router.acompletion(model="moe", messages=messages(i))

    backends = [
        LiteLLMBackend(MODEL, name=f"b{j}", api_key="sk-mock", params={"mock_response": ANSWER})
        for j in range(4)
    ]
    kinds = (CodingExpert, ReasoningExpert, KnowledgeExpert, EpistemicExpert)
    pipeline = Pipeline(
        [cls(backends=[b]) for cls, b in zip(kinds, backends, strict=True)],
        router=Router(RouterConfig(top_k=1), encoder=HashingEncoder()),
    )

    async def ours(i: int) -> None:
        await pipeline.run(messages(i)[0]["content"])

    contenders = {"bare litellm.acompletion": bare, "litellm Router": peer, "moe-agents Pipeline": ours}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    async with pipeline:
        for call in contenders.values():
            await _run(min(n, 50), call)  # warm-up: imports, caches, the gate
        for _ in range(rounds):  # interleaved, so that a noisy minute hits every contender alike
            for name, call in contenders.items():
                runs[name].append(await _run(n, call))
    results: dict[str, Any] = {}
    for name, rs in runs.items():
        median = {key: float(np.median([r[key] for r in rs])) for key in rs[0]}
        results[name] = median | {"cpu_ms_per_request_rounds": [r["cpu_ms_per_request"] for r in rs]}
    return results


def main(n: int, out: Path, rounds: int = 3) -> None:
    results = anyio.run(measure, n, rounds)
    bare = results["bare litellm.acompletion"]["cpu_ms_per_request"]
    peer = results["litellm Router"]["cpu_ms_per_request"]
    table = Table(
        title=f"{n} concurrent chat calls on litellm mock responses (one process; median of {rounds} rounds)"
    )
    for column in ("path", "CPU ms/request", "added over bare", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    for name, r in results.items():
        cpu = r["cpu_ms_per_request"]
        table.add_row(name, f"{cpu:.2f}", f"{cpu - bare:+.2f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}")
    console = Console()
    console.print(table)
    ours = results["moe-agents Pipeline"]["cpu_ms_per_request"]
    targets = {
        "below litellm Router": ours < peer,
        "≤ bare litellm + 1.0 ms": ours <= bare + 1.0,
    }
    for name, ok in targets.items():
        console.print(
            f"target {name}: {'met' if ok else 'MISSED'} "
            f"({ours:.2f} ms vs Router {peer:.2f}, bare {bare:.2f})"
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "overhead_litellm.json"
    summary = {"requests": n, "rounds": rounds, "results": results, "targets": targets}
    path.write_text(json.dumps(summary, indent=2))
    plot(results, n, out / "overhead_litellm.png")
    console.print(f"wrote {path} and {path.with_suffix('.png')}")


def plot(results: dict[str, Any], n: int, path: Path) -> None:
    """CPU per request of each contender, bare litellm + 1 ms marked (the target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cpu = [results[name]["cpu_ms_per_request"] for name in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, cpu, color=["tab:gray", "tab:blue", "tab:orange"][: len(names)])
    ax.axhline(cpu[0] + 1.0, color="gray", linestyle="--", label="bare + 1.0 ms (target)")
    for i, value in enumerate(cpu):
        ax.text(i, value, f"{value:.2f}", ha="center", va="bottom")
    ax.set_ylabel("process CPU per request (ms)")
    ax.set_title(f"{n} concurrent chat calls, litellm mock responses")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
