"""Where a request's CPU goes: cProfile over N concurrent ``Pipeline.run`` calls, per request.

Two set-ups, as in ``benchmarks/overhead.py``: ``litellm`` (4 experts on ``LiteLLMBackend`` with
litellm's ``mock_response``, top-1, its ``--mode litellm``) and ``fanout`` (4 experts on
``FunctionBackend`` with no latency, top-2, its default mode), both with the ``HashingEncoder`` so
that no encoder cost is counted. After a warm-up, the N calls run concurrently under cProfile; the
summary lists the functions with the most own time (and, apart, the most cumulative time), in
microseconds per request. cProfile inflates small, often-called functions; compare runs with
each other, not with the benchmark's un-profiled CPU figures.

Run: ``python benchmarks/profile_request.py [--setup litellm|fanout] [--requests 1000] [--top 15]
[--out benchmarks/results/profile.txt]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import anyio
import structlog
from litellm_peer import ANSWER, MODEL, PROMPTS  # the same calls as the benchmark (this folder)


def build(setup: str):  # type: ignore[no-untyped-def]
    from moe_agents import ExpertPolicy, LiteLLMBackend, Pipeline, Router, RouterConfig
    from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, ReasoningExpert
    from moe_agents.testing import FunctionBackend, HashingEncoder

    kinds = (CodingExpert, ReasoningExpert, KnowledgeExpert, EpistemicExpert)
    if setup == "litellm":
        backends = [
            LiteLLMBackend(MODEL, name=f"b{j}", api_key="sk-mock", params={"mock_response": ANSWER})
            for j in range(4)
        ]
        experts = [cls(backends=[b]) for cls, b in zip(kinds, backends, strict=True)]
        top_k = 1
    else:
        backends = [FunctionBackend(lambda m: ANSWER, name=f"b{j}") for j in range(4)]
        policy = ExpertPolicy(max_load=100_000)
        experts = [cls(backends=[b], policy=policy) for cls, b in zip(kinds, backends, strict=True)]
        top_k = 2
    return Pipeline(experts, router=Router(RouterConfig(top_k=top_k), encoder=HashingEncoder()))


async def profile(setup: str, n: int) -> tuple[cProfile.Profile, float]:
    pipeline = build(setup)

    async def batch(tag: str, count: int) -> None:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(pipeline.run, f"{PROMPTS[i % len(PROMPTS)]} ({tag} #{i})")

    async with pipeline:
        await batch("warm-up", 50)
        profiler = cProfile.Profile(time.process_time)  # CPU, not time spent waiting
        cpu = time.process_time()
        profiler.enable()
        await batch("profiled", n)
        profiler.disable()
        cpu = time.process_time() - cpu
    return profiler, cpu


def summary(profiler: cProfile.Profile, n: int, top: int) -> str:
    stats = pstats.Stats(profiler)
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{_short(file)}:{line}({func})"
        rows.append((tottime, cumtime, calls, where))
    total = sum(r[0] for r in rows)
    ours = sum(r[0] for r in rows if r[3].startswith("moe_agents/"))
    out = io.StringIO()
    out.write(f"profiled own time, all functions: {total / n * 1e6:.0f} us per request\n")
    out.write(f"profiled own time in moe_agents functions: {ours / n * 1e6:.0f} us per request\n\n")
    for title, key in (("own time", 0), ("cumulative time", 1)):
        out.write(f"top {top} by {title} (us per request; calls per request)\n")
        out.write(f"{'own us':>8} {'cum us':>8} {'calls':>7}  function\n")
        for tottime, cumtime, calls, where in sorted(rows, key=lambda r: -r[key])[:top]:
            out.write(f"{tottime / n * 1e6:>8.1f} {cumtime / n * 1e6:>8.1f} {calls / n:>7.2f}  {where}\n")
        out.write("\n")
    return out.getvalue()


def _short(file: str) -> str:
    for marker in ("site-packages/", "moe_agents/", "lib/python3"):
        if marker in file:
            head = "moe_agents/" if marker == "moe_agents/" else ""
            return head + file.split(marker, 1)[1]
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", choices=["litellm", "fanout"], default="litellm")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # as overhead.py
    profiler, cpu = anyio.run(profile, args.setup, args.requests)
    text = (
        f"setup {args.setup}: {args.requests} concurrent Pipeline.run calls, HashingEncoder; "
        f"CPU under the profiler {cpu / args.requests * 1000:.2f} ms per request\n\n"
        + summary(profiler, args.requests, args.top)
    )
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
