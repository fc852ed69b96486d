"""moe-agents on Ray Serve (issue 15): the hop's cost, replica scaling, multiplexed routing, a replica killed.

Four parts, on one private local Ray cluster started once (``RayConfig(num_cpus=2)``):

(a) **hop**: the ``replay`` backend (GSM8K answers recorded from GPT-4-1106) called in this process
    vs through ``RayBackend`` with one replica (permission router, and Ray's default router);
    sequential calls, interleaved; p50/p95 and the p50 added (target <= 3 ms). The streamed path
    (``on_chunk``) is shown too, without a target.
(b) **scaling**: a latency-bound double (sleeps ``--service-ms`` per call) with 1, 2 and 4
    replicas of ``max_ongoing_requests=1`` (one call at a time per replica), a closed loop of
    ``--scale-concurrency`` callers; throughput vs 1 replica's times the replicas (target >= 0.8x
    linear), for the permission router and for Ray's default router.
(c) **multiplexing**: 8 models (doubles whose ``load`` sleeps ``--swap-ms``) over 2 replicas x 2
    slots; ``--pool-rounds`` seeded traces with locality (Zipf popularity, runs of one model), a
    closed loop of ``--pool-concurrency`` callers; each trace runs on the permission router's
    deployment and on one with Ray's power-of-two-choices (both deployed, alternating which goes
    first); model loads (counted on the replicas: each load appends a line to a file) and p50
    latency (target: fewer loads, p50 no worse).
(d) **a replica killed**: ``--kill-requests`` requests (``--kill-concurrency`` at once) through a
    ``Pipeline`` whose one expert holds a ``RayBackend`` with 3 replicas of the replay backend
    (``--kill-latency-ms`` per call); halfway through, the replica that answered most of the
    latest calls is ``ray.kill``-ed. Every request must be answered (target 0 lost): a dead
    replica is a retryable ``BackendError`` that the expert's guard retries on a live replica.

Everything shares 2 CPU cores: this driver (the callers, the pipeline, Serve's routers), Ray's own
processes (GCS, raylet, Serve controller) and every replica; numbers are for that machine.

Run: ``python benchmarks/ray_scale.py [--quick] [--data ../shared/data]``
Writes ``benchmarks/results/ray_scale.json`` and ``benchmarks/results/ray_scale.png``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import psutil
import structlog
from rich.console import Console
from rich.table import Table

from moe_agents import ExpertPolicy, LLMExpert, Pipeline, Router, RouterConfig
from moe_agents.backends.base import ChunkCallback, Completion, GenerationSettings
from moe_agents.cluster import Placement, RayConfig
from moe_agents.cluster.proxy import RayBackend
from moe_agents.cluster.replica import BackendMaker
from moe_agents.cluster.runtime import connect
from moe_agents.recorded import load_gsm8k_recorded
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "results"
REPLAY_MODEL = "gpt-4-1106"
EVENTS: Counter[str] = Counter()
"""Library log events seen (``backend.retry``, ``ray.call_failed``, ...), counted by name."""


# --- test doubles (built inside the replicas) ---------------------------------------------------


def constant_reply(messages: Sequence[Message]) -> str:
    return "ok"


class SwapBackend:
    """A local model whose ``load`` takes ``swap_s`` (reading weights) and each call ``latency_s``.

    Each load and unload appends a line to ``log`` (shared by every replica on this machine), and
    so does a call that finishes after its model was unloaded under it (evicted mid-call).
    """

    def __init__(self, model: str, *, swap_s: float, latency_s: float, log: str) -> None:
        self.name = f"swap:{model}"
        self.model = model
        self.modalities: frozenset[str] = frozenset()
        self.swap_s, self.latency_s, self.log = swap_s, latency_s, log
        self.loaded = False

    def _note(self, what: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{what} {self.model} {os.getpid()} {time.time():.6f}\n")

    async def load(self) -> None:
        if not self.loaded:
            await anyio.sleep(self.swap_s)
            self.loaded = True
            self._note("load")

    async def unload(self) -> None:
        if self.loaded:
            self.loaded = False
            self._note("unload")

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        await anyio.sleep(self.latency_s)
        if not self.loaded:
            self._note("evicted-mid-call")
        return Completion(self.model, self.model)


class Solver(LLMExpert):
    kind = "maths"
    default_exemplars = ("solve this word problem", "how many apples are left", "compute the total cost")


# --- helpers ------------------------------------------------------------------------------------


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def count_events(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: counts each library event by name, lets only errors through."""
    EVENTS[str(event_dict.get("event", ""))] += 1
    if method_name not in ("error", "critical", "exception"):
        raise structlog.DropEvent
    return event_dict


async def closed_loop(
    n: int, concurrency: int, call: Callable[[int], Awaitable[object]]
) -> tuple[list[float], float]:
    """Runs calls ``0..n-1`` in order with ``concurrency`` callers; per-call seconds and the wall time."""
    latencies = [0.0] * n
    next_i = 0

    async def caller() -> None:
        nonlocal next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            t = time.perf_counter()
            await call(i)
            latencies[i] = time.perf_counter() - t

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(caller)
    return latencies, time.perf_counter() - start


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


# --- (a) the hop ----------------------------------------------------------------------------------


async def part_hop(args: argparse.Namespace, ray: RayConfig, questions: list[str]) -> dict[str, Any]:
    make = BackendMaker("replay", {"dataset": "gsm8k", "model": REPLAY_MODEL, "data_dir": args.data})
    local = make()
    await local.load()
    remote = {
        router: RayBackend(
            f"rs-hop-{router}",
            make,
            Placement(replicas=1, num_cpus=0.5, max_ongoing_requests=8, router=router),
            ray,
        )
        for router in ("permission", "ray")
    }
    t = time.perf_counter()
    for backend in remote.values():
        await backend.load()
    deploy_s = (time.perf_counter() - t) / len(remote)
    chunks: list[int] = []

    async def sink(text: str) -> None:
        chunks[-1] += 1

    calls: dict[str, Callable[[list[Message]], Awaitable[Completion]]] = {
        "in_process": lambda m: local.complete(m),
        "ray": lambda m: remote["permission"].complete(m),
        "ray_default_router": lambda m: remote["ray"].complete(m),
        "ray_stream": lambda m: remote["permission"].complete(m, on_chunk=sink),
    }
    series: dict[str, list[float]] = {key: [] for key in calls}
    answered = 0
    try:
        for i in range(-20, args.hop_calls):  # 20 warm-up rounds
            messages = user(questions[i % len(questions)])
            for key, call in calls.items():  # interleaved: drift on the shared cores hits all alike
                chunks.append(0)
                t = time.perf_counter()
                completion = await call(messages)
                if i >= 0:
                    series[key].append((time.perf_counter() - t) * 1000)
                    answered += key == "ray" and bool(completion.text)
        placement = dict(completion.metadata.get("placement", {}))
    finally:
        for backend in remote.values():
            await backend.unload()
    out: dict[str, Any] = {"calls": args.hop_calls, "deploy_s": deploy_s}
    for key, ms in series.items():
        out[key] = {"p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95), "latencies_ms": ms}
    base = out["in_process"]
    out["added_p50_ms"] = out["ray"]["p50_ms"] - base["p50_ms"]
    out["added_p95_ms"] = out["ray"]["p95_ms"] - base["p95_ms"]
    out["default_router_added_p50_ms"] = out["ray_default_router"]["p50_ms"] - base["p50_ms"]
    out["stream_added_p50_ms"] = out["ray_stream"]["p50_ms"] - base["p50_ms"]
    streamed = [c for c in chunks if c]
    out["stream_chunks_p50"] = pct(streamed, 50)
    out["ray_answered_nonempty"] = answered
    out["placement_example"] = placement
    return out


# --- (b) scaling ------------------------------------------------------------------------------


async def part_scale(args: argparse.Namespace, ray: RayConfig) -> dict[str, Any]:
    service_s = args.service_ms / 1000
    make = functools.partial(FunctionBackend, constant_reply, name="sleeper", latency_s=service_s)
    out: dict[str, Any] = {"service_ms": args.service_ms, "concurrency": args.scale_concurrency, "runs": []}
    for router in ("permission", "ray"):
        for replicas in (1, 2, 4):
            placement = Placement(
                replicas=replicas,
                num_cpus=0.1,
                max_ongoing_requests=1,
                router=router,
                service_s=service_s,
                swap_s=0.0,
            )
            backend = RayBackend(f"rs-scale-{router}-{replicas}", make, placement, ray)
            await backend.load()
            try:
                n = args.scale_calls * replicas
                seen: Counter[str] = Counter()

                async def call(i: int, backend: RayBackend = backend, seen: Counter[str] = seen) -> None:
                    completion = await backend.complete(user(f"q{i}"))
                    seen[completion.metadata["placement"]["replica"]] += 1

                await closed_loop(4 * replicas, args.scale_concurrency, call)  # warm-up
                seen.clear()
                psutil.cpu_percent()
                latencies, wall = await closed_loop(n, args.scale_concurrency, call)
                cpu = psutil.cpu_percent()
            finally:
                await backend.unload()
            out["runs"].append(
                {
                    "router": router,
                    "replicas": replicas,
                    "calls": n,
                    "wall_s": wall,
                    "throughput_rps": n / wall,
                    "ideal_rps": replicas / service_s,
                    "vs_ideal": n / wall / (replicas / service_s),
                    "cpu_busy_pct": cpu,
                    "p50_ms": pct(latencies, 50) * 1000,
                    "replicas_answering": len(seen),
                    "calls_per_replica": sorted(seen.values(), reverse=True),
                }
            )
    for router in ("permission", "ray"):
        runs = [r for r in out["runs"] if r["router"] == router]
        base = runs[0]["throughput_rps"]
        for r in runs:
            r["vs_linear"] = r["throughput_rps"] / (base * r["replicas"])
    return out


# --- (c) multiplexing -------------------------------------------------------------------------


def locality_trace(n: int, models: int, seed: int) -> list[int]:
    """Model index per request: runs (geometric, mean 6) of one model drawn by Zipf popularity."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** 1.1 for k in range(models)]
    trace: list[int] = []
    while len(trace) < n:
        model = rng.choices(range(models), weights)[0]
        run = 1
        while rng.random() > 1 / 6:
            run += 1
        trace.extend([model] * run)
    return trace[:n]


def read_log(path: Path, since: float) -> Counter[str]:
    found: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            what, _model, _pid, at = line.split()
            if float(at) >= since:
                found[what] += 1
    return found


async def part_pool(args: argparse.Namespace, ray: RayConfig, tmp: Path) -> dict[str, Any]:
    names = [f"m{k}" for k in range(8)]
    routers = ("permission", "ray")
    traces = [locality_trace(args.pool_calls, len(names), args.seed + r) for r in range(args.pool_rounds)]
    out: dict[str, Any] = {
        "models": len(names),
        "replicas": 2,
        "slots": 2,
        "swap_ms": args.swap_ms,
        "service_ms": args.pool_service_ms,
        "concurrency": args.pool_concurrency,
        "rounds": args.pool_rounds,
        "calls": sum(len(t) for t in traces),
        "runs_in_traces": sum(1 + sum(a != b for a, b in itertools.pairwise(t)) for t in traces),
        "requests_per_model": [sum(t.count(k) for t in traces) for k in range(len(names))],
        "routers": {},
    }
    pools: dict[str, list[RayBackend]] = {}
    logs = {router: tmp / f"pool-{router}.log" for router in routers}
    for router in routers:  # both deployed at once, so that the rounds can alternate
        pool = {
            m: functools.partial(
                SwapBackend,
                m,
                swap_s=args.swap_ms / 1000,
                latency_s=args.pool_service_ms / 1000,
                log=str(logs[router]),
            )
            for m in names
        }
        placement = Placement(
            replicas=2,
            num_cpus=0.1,
            max_ongoing_requests=8,
            router=router,
            service_s=args.pool_service_ms / 1000,
            swap_s=args.swap_ms / 1000,
        )
        pools[router] = [
            RayBackend(f"rs-pool-{router}", None, placement, ray, model_id=m, pool=pool, slots=2)
            for m in names
        ]
        for b in pools[router]:  # deploys once; each describe loads its model somewhere
            await b.load()
    await anyio.sleep(1.0)  # let the replicas' model ids reach the routers
    stats: dict[str, dict[str, Any]] = {
        r: {"counts": Counter(), "ms": [], "wall_s": 0.0, "cpu": [], "seen": Counter(), "per_round": []}
        for r in routers
    }
    for router in routers:
        stats[router]["warmup_loads"] = read_log(logs[router], 0.0)["load"]
    try:
        for round_, trace in enumerate(traces):
            for router in routers if round_ % 2 == 0 else routers[::-1]:  # alternate who goes first
                backends, st = pools[router], stats[router]

                async def call(
                    i: int, backends: list[RayBackend] = backends, st: dict = st, trace: list[int] = trace
                ) -> None:
                    completion = await backends[trace[i]].complete(user(f"q{i}"))
                    assert completion.text == names[trace[i]], (completion.text, names[trace[i]])
                    st["seen"][completion.metadata["placement"]["replica"]] += 1

                start = time.time()
                psutil.cpu_percent()
                latencies, wall = await closed_loop(len(trace), args.pool_concurrency, call)
                st["cpu"].append(psutil.cpu_percent())
                counts = read_log(logs[router], start)
                st["counts"] += counts
                st["ms"] += [x * 1000 for x in latencies]
                st["wall_s"] += wall
                st["per_round"].append({"loads": counts["load"], "p50_ms": pct(latencies, 50) * 1000})
    finally:
        for router in routers:
            await pools[router][0].unload()  # deletes the application of the whole pool
    for router, st in stats.items():
        ms = st["ms"]
        out["routers"][router] = {
            "loads": st["counts"]["load"],
            "unloads": st["counts"]["unload"],
            "evicted_mid_call": st["counts"]["evicted-mid-call"],
            "warmup_loads": st["warmup_loads"],
            "p50_ms": pct(ms, 50),
            "p95_ms": pct(ms, 95),
            "mean_ms": float(np.mean(ms)),
            "wall_s": st["wall_s"],
            "cpu_busy_pct": float(np.mean(st["cpu"])),
            "per_round": st["per_round"],
            "calls_per_replica": sorted(st["seen"].values(), reverse=True),
            "latencies_ms": ms,
        }
    return out


# --- (d) a replica killed -----------------------------------------------------------------------


def replica_actors(app: str) -> list[dict[str, str]]:
    import ray

    return [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app}#")
    ]


async def part_kill(args: argparse.Namespace, ray_config: RayConfig, questions: list[str]) -> dict[str, Any]:
    import ray

    app = "rs-kill"
    make = BackendMaker(
        "replay",
        {
            "dataset": "gsm8k",
            "model": REPLAY_MODEL,
            "data_dir": args.data,
            "latency_s": args.kill_latency_ms / 1000,
            "missing": "empty",
        },
    )
    backend = RayBackend(app, make, Placement(replicas=3, num_cpus=0.1, max_ongoing_requests=32), ray_config)
    policy = ExpertPolicy(max_load=10_000, timeout_s=60.0)
    pipeline = Pipeline(
        [Solver(backends=[backend], policy=policy)],
        router=Router(RouterConfig(top_k=1), encoder=HashingEncoder()),
    )
    n = args.kill_requests
    half = anyio.Event()
    done = 0
    records: list[dict[str, Any]] = [{} for _ in range(n)]
    killed: dict[str, Any] = {}
    events_before = Counter(EVENTS)

    async def call(i: int) -> None:
        nonlocal done
        t = time.perf_counter()
        try:
            result = await pipeline.run(questions[i % len(questions)])
        except Exception as exc:  # a lost request: what it raised
            records[i] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:300],
                "end": time.perf_counter(),
            }
        else:
            placement = result.answer.metadata.get("placement", {})
            records[i] = {
                "ok": True,
                "replica": placement.get("replica"),
                "nonempty": bool(result.answer.text),
                "end": time.perf_counter(),
            }
        records[i]["latency_ms"] = (records[i]["end"] - t) * 1000
        done += 1
        if done >= n // 2:
            half.set()

    async def killer() -> None:
        await half.wait()
        actors = replica_actors(app)
        # the busiest replica lately (most of the last answers), so that calls are in flight on it
        ended = sorted((r for r in records if r.get("ok")), key=lambda r: r["end"])[
            -2 * args.kill_concurrency :
        ]
        recent = Counter(r["replica"] for r in ended)
        victim = max(actors, key=lambda a: (recent[a["name"].rsplit("#", 1)[-1]], a["name"]))
        handle = ray.get_actor(victim["name"], namespace=victim["namespace"])
        killed.update(
            name=victim["name"],
            replica=victim["name"].rsplit("#", 1)[-1],
            at=time.perf_counter(),
            after_done=done,
            replicas_before=len(actors),
        )
        ray.kill(handle, no_restart=True)

    async with pipeline:
        await closed_loop(30, 8, lambda i: pipeline.run(questions[i]))  # warm-up
        start = time.perf_counter()
        psutil.cpu_percent()
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            latencies, wall = await closed_loop(n, args.kill_concurrency, call)
        cpu = psutil.cpu_percent()
        replicas_after = len(replica_actors(app))
    ok = [r for r in records if r["ok"]]
    lost = [r for r in records if not r["ok"]]
    kill_at = killed.get("at", float("inf"))
    victim = killed.get("replica")
    by_victim_after = sum(r["ok"] and r["replica"] == victim and r["end"] > kill_at + 1 for r in records)
    by_victim_before = sum(r["ok"] and r["replica"] == victim and r["end"] <= kill_at for r in records)
    events = {
        k: EVENTS[k] - events_before[k] for k in ("backend.retry", "ray.call_failed", "backend.circuit_open")
    }
    return {
        "requests": n,
        "concurrency": args.kill_concurrency,
        "latency_ms_per_call": args.kill_latency_ms,
        "replicas": 3,
        "answered": len(ok),
        "lost": len(lost),
        "lost_errors": Counter(r["error"] for r in lost).most_common(5),
        "nonempty_answers": sum(r["nonempty"] for r in ok),
        "replicas_answering": len({r["replica"] for r in ok}),
        "replicas_answering_before_kill": len({r["replica"] for r in ok if r["end"] <= kill_at}),
        "replicas_answering_after_kill": len({r["replica"] for r in ok if r["end"] > kill_at + 1}),
        "answers_per_replica": Counter(r["replica"] for r in ok).most_common(),
        "killed": {k: v for k, v in killed.items() if k != "at"} | {"at_s": kill_at - start},
        "victim_answers_before_kill": by_victim_before,
        "victim_answers_after_kill_plus_1s": by_victim_after,
        "replica_actors_after": replicas_after,
        "events": events,
        "wall_s": wall,
        "throughput_rps": n / wall,
        "cpu_busy_pct": cpu,
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "timeline": [[r["end"] - start, r["ok"], r.get("replica")] for r in records],
    }


# --- report -------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def report(results: dict[str, Any]) -> Table:
    table = Table(
        title="moe-agents on Ray Serve (2 CPU cores shared by driver, Ray and replicas)", title_justify="left"
    )
    for column in ("part", "measure", "value", "target", ""):
        table.add_column(column, justify="left" if column in ("part", "measure") else "right")
    hop = results.get("hop")
    if hop:
        table.add_row(
            "(a) hop",
            "p50 in-process / Ray (permission router) / Ray (default router)",
            f"{hop['in_process']['p50_ms']:.2f} / {hop['ray']['p50_ms']:.2f} / "
            f"{hop['ray_default_router']['p50_ms']:.2f} ms",
            "",
            "",
        )
        table.add_row(
            "",
            "p95 in-process / Ray (permission) / Ray (default)",
            f"{hop['in_process']['p95_ms']:.2f} / {hop['ray']['p95_ms']:.2f} / "
            f"{hop['ray_default_router']['p95_ms']:.2f} ms",
            "",
            "",
        )
        added = hop["added_p50_ms"]
        table.add_row(
            "",
            "p50 added by the hop (permission router)",
            f"{added:.2f} ms",
            "<= 3 ms",
            verdict(added <= 3.0),
        )
        table.add_row(
            "",
            "p50 added by the hop (default router)",
            f"{hop['default_router_added_p50_ms']:.2f} ms",
            "<= 3 ms",
            verdict(hop["default_router_added_p50_ms"] <= 3.0),
        )
        table.add_row(
            "",
            f"p50 added, streamed ({hop['stream_chunks_p50']:.0f} chunks per reply)",
            f"{hop['stream_added_p50_ms']:.2f} ms",
            "",
            "",
        )
    scale = results.get("scale")
    if scale:
        for router in ("permission", "ray"):
            runs = [r for r in scale["runs"] if r["router"] == router]
            tput = " / ".join(f"{r['throughput_rps']:.1f}" for r in runs)
            ideal = " / ".join(f"{r['ideal_rps']:.0f}" for r in runs)
            table.add_row(
                "(b) scaling" if router == "permission" else "",
                f"{router} router: calls/s at 1/2/4 replicas (ideal {ideal})",
                tput,
                "",
                "",
            )
            worst = min(r["vs_linear"] for r in runs)
            table.add_row(
                "",
                f"{router} router: x linear (its 1-replica rate x n) at 2 / 4 replicas",
                " / ".join(f"{r['vs_linear']:.2f}" for r in runs[1:]),
                ">= 0.8",
                verdict(worst >= 0.8),
            )
            table.add_row(
                "",
                f"{router} router: x ideal (n / service time) at 1 / 2 / 4; CPU busy %",
                " / ".join(f"{r['vs_ideal']:.2f}" for r in runs)
                + "; "
                + " / ".join(f"{r['cpu_busy_pct']:.0f}" for r in runs),
                "",
                "",
            )
    pool = results.get("pool")
    if pool:
        p, r = pool["routers"]["permission"], pool["routers"]["ray"]
        table.add_row(
            "(c) multiplexing",
            f"model loads, permission / ray ({pool['calls']} calls, {pool['runs_in_traces']} model runs)",
            f"{p['loads']} / {r['loads']}",
            "fewer",
            verdict(p["loads"] < r["loads"]),
        )
        table.add_row(
            "",
            "p50 latency, permission / ray",
            f"{p['p50_ms']:.1f} / {r['p50_ms']:.1f} ms",
            "<= ray + 5%",
            verdict(p["p50_ms"] <= r["p50_ms"] * 1.05),
        )
        rounds = zip(p["per_round"], r["per_round"], strict=True)
        table.add_row(
            "",
            "p50 per round, permission / ray",
            ", ".join(f"{a['p50_ms']:.0f} / {b['p50_ms']:.0f}" for a, b in rounds) + " ms",
            "",
            "",
        )
        table.add_row(
            "", "p95 latency, permission / ray", f"{p['p95_ms']:.1f} / {r['p95_ms']:.1f} ms", "", ""
        )
        table.add_row(
            "", "mean latency, permission / ray", f"{p['mean_ms']:.1f} / {r['mean_ms']:.1f} ms", "", ""
        )
        table.add_row(
            "",
            "calls finished on an evicted model, permission / ray",
            f"{p['evicted_mid_call']} / {r['evicted_mid_call']}",
            "",
            "",
        )
    kill = results.get("kill")
    if kill:
        table.add_row(
            "(d) replica killed",
            f"lost of {kill['requests']} (killed after {kill['killed'].get('after_done', '?')} answered)",
            str(kill["lost"]),
            "0",
            verdict(kill["lost"] == 0),
        )
        table.add_row(
            "",
            "retries / replica-death errors / circuit opened",
            f"{kill['events']['backend.retry']} / {kill['events']['ray.call_failed']} / "
            f"{kill['events']['backend.circuit_open']}",
            "",
            "",
        )
        table.add_row(
            "",
            "replicas answering before / from 1 s after the kill",
            f"{kill['replicas_answering_before_kill']} / {kill['replicas_answering_after_kill']}",
            "",
            "",
        )
        table.add_row(
            "",
            "calls/s; CPU busy %; latency p50 / p99 / max",
            f"{kill['throughput_rps']:.0f}; {kill['cpu_busy_pct']:.0f}; "
            f"{kill['p50_ms']:.0f} / {kill['p99_ms']:.0f} / {kill['max_ms']:.0f} ms",
            "",
            "",
        )
    return table


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    hop = results.get("hop")
    if hop:
        for key, label in (
            ("in_process", "in-process"),
            ("ray", "Ray hop (permission router)"),
            ("ray_default_router", "Ray hop (default router)"),
            ("ray_stream", "Ray hop, streamed"),
        ):
            ms = np.sort(np.asarray(hop[key]["latencies_ms"]))
            ax.plot(ms, np.linspace(0, 1, len(ms)), label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency per call (ms)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(f"(a) replay backend, {hop['calls']} sequential calls")
        ax.legend()
    ax = axes[0][1]
    scale = results.get("scale")
    if scale:
        width = 0.35
        xs = np.arange(3)
        colors = {"permission": "tab:blue", "ray": "tab:orange"}
        for k, router in enumerate(("permission", "ray")):
            runs = [r for r in scale["runs"] if r["router"] == router]
            ax.bar(
                xs + (k - 0.5) * width,
                [r["throughput_rps"] for r in runs],
                width,
                color=colors[router],
                label=f"{router} router",
            )
            base = runs[0]["throughput_rps"]
            ax.plot(
                xs,
                [0.8 * base * n for n in (1, 2, 4)],
                ":",
                color=colors[router],
                label=f"0.8x linear ({router})",
            )
        ax.plot(xs, [r["ideal_rps"] for r in scale["runs"][:3]], "k--", label="ideal: n / service time")
        ax.set_xticks(xs, ["1", "2", "4"])
        ax.set_xlabel("replicas (max_ongoing_requests=1)")
        ax.set_ylabel("calls / s")
        ax.set_title(f"(b) {scale['service_ms']:.0f} ms per call, {scale['concurrency']} callers")
        ax.legend(fontsize=8)
    ax = axes[1][0]
    pool = results.get("pool")
    if pool:
        routers = ("permission", "ray")
        xs = np.arange(2)
        ax.bar(
            xs - 0.27, [pool["routers"][r]["loads"] for r in routers], 0.27, color="tab:purple", label="loads"
        )
        ax.set_ylabel("model loads during the trace")
        ax.set_xticks(xs, [f"{r} router" for r in routers])
        twin = ax.twinx()
        for offset, key, color in ((0.0, "p50_ms", "tab:orange"), (0.27, "p95_ms", "tab:red")):
            values = [pool["routers"][r][key] for r in routers]
            twin.bar(xs + offset, values, 0.27, color=color, label=key.replace("_ms", " latency"))
        twin.set_ylabel("latency (ms)")
        ax.set_title(f"(c) 8 models, 2 replicas x 2 slots, {pool['calls']} calls")
        handles = ax.get_legend_handles_labels()
        twin_handles = twin.get_legend_handles_labels()
        ax.legend(handles[0] + twin_handles[0], handles[1] + twin_handles[1], fontsize=8, loc="upper left")
    ax = axes[1][1]
    kill = results.get("kill")
    if kill:
        timeline = kill["timeline"]
        end = max(t for t, _, _ in timeline)
        bins = np.arange(0, end + 0.25, 0.25)
        replicas = sorted({r for _, ok, r in timeline if ok})
        stacks = [
            np.histogram([t for t, ok, r in timeline if ok and r == rep], bins)[0] / 0.25 for rep in replicas
        ]
        labels = [
            f"replica {rep[:8]}" + (" (killed)" if rep == kill["killed"].get("replica") else "")
            for rep in replicas
        ]
        ax.stackplot(bins[:-1], *stacks, labels=labels, step="post")
        lost = [t for t, ok, _ in timeline if not ok]
        if lost:
            ax.plot(lost, [0] * len(lost), "rx", label="lost")
        ax.axvline(kill["killed"]["at_s"], color="k", linestyle="--", label="kill")
        ax.set_xlabel("seconds")
        ax.set_ylabel("answers / s")
        ax.set_title(f"(d) {kill['requests']} requests, one of 3 replicas killed: {kill['lost']} lost")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


async def measure(args: argparse.Namespace, parts: list[str]) -> dict[str, Any]:
    ray_config = RayConfig(num_cpus=2, object_store_mb=args.object_store_mb)
    questions = list(load_gsm8k_recorded(args.data).questions)
    results: dict[str, Any] = {}
    t = time.perf_counter()
    await anyio.to_thread.run_sync(connect, ray_config)
    results["ray_start_s"] = time.perf_counter() - t
    logging.getLogger("ray.serve").setLevel(logging.ERROR)  # one "replica died" line per routed call
    with tempfile.TemporaryDirectory(prefix="moe-agents-ray-scale-") as tmp:
        for part in parts:
            t = time.perf_counter()
            console = Console(stderr=True)
            console.print(f"[dim]part {part}...[/dim]")
            if part == "hop":
                results[part] = await part_hop(args, ray_config, questions)
            elif part == "scale":
                results[part] = await part_scale(args, ray_config)
            elif part == "pool":
                results[part] = await part_pool(args, ray_config, Path(tmp))
            elif part == "kill":
                results[part] = await part_kill(args, ray_config, questions)
            results[part]["part_s"] = time.perf_counter() - t
            console.print(f"[dim]part {part}: {results[part]['part_s']:.1f} s[/dim]")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer calls in every part")
    parser.add_argument(
        "--data",
        default=os.environ.get("MOE_AGENTS_EVAL_DATA", str(ROOT.parent / "shared" / "data")),
        help="evaluation data (the GSM8K recordings are read from here)",
    )
    parser.add_argument("--parts", default="hop,scale,pool,kill", help="comma-separated subset")
    parser.add_argument("--hop-calls", type=int, default=400)
    parser.add_argument("--service-ms", type=float, default=50.0, help="(b) seconds per call of the double")
    parser.add_argument("--scale-calls", type=int, default=100, help="(b) calls per replica")
    parser.add_argument("--scale-concurrency", type=int, default=16)
    parser.add_argument("--pool-calls", type=int, default=400)
    parser.add_argument("--pool-concurrency", type=int, default=6)
    parser.add_argument("--pool-rounds", type=int, default=2, help="(c) traces, each run by both routers")
    parser.add_argument("--swap-ms", type=float, default=300.0, help="(c) a model's load time")
    parser.add_argument("--pool-service-ms", type=float, default=20.0)
    parser.add_argument("--kill-requests", type=int, default=2000)
    parser.add_argument("--kill-concurrency", type=int, default=64)
    parser.add_argument(
        "--kill-latency-ms", type=float, default=500.0, help="(d) per call: calls in flight on every replica"
    )
    parser.add_argument("--object-store-mb", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.quick:
        args.hop_calls, args.scale_calls, args.pool_calls, args.pool_rounds = 60, 25, 100, 1
        args.kill_requests, args.kill_concurrency = 300, 32
    args.data = str(Path(args.data).resolve())  # replicas may run in another directory
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"hop", "scale", "pool", "kill"}
    if unknown:
        raise SystemExit(f"unknown parts: {sorted(unknown)}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # RayConfig(address="local") calls ray.init() without an address, which joins the cluster named
    # in /tmp/ray/ray_current_cluster when someone ran `ray start`: force a private one
    os.environ["RAY_ADDRESS"] = "local"
    # a Ray call from Serve's driver threads after ray.shutdown() would start a second cluster
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    structlog.configure(processors=[count_events, structlog.dev.ConsoleRenderer()])
    logging.getLogger("moe_agents").setLevel(logging.INFO)  # counted, then dropped below errors
    if __name__ != "__main__":  # imported as a module: replicas get the doubles by value
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])

    import ray

    load_at_start = os.getloadavg()
    t = time.perf_counter()
    try:
        results = anyio.run(measure, args, parts)
    finally:
        t_stop = time.perf_counter()
        ray.shutdown()  # the private cluster, Serve and every replica with it
        print(f"ray.shutdown: {time.perf_counter() - t_stop:.1f} s", file=sys.stderr)
    total_s = time.perf_counter() - t

    table = report(results)
    table.caption = (
        f"one machine, {os.cpu_count()} CPU cores shared by this driver, Ray's processes and every replica "
        f"(load average {load_at_start[0]:.1f} at the start, other jobs included); total {total_s:.0f} s"
    )
    Console(width=160).print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    environment = {
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "note": "one machine; 2 CPU cores shared by this driver, Ray's processes and every replica",
    }

    def strip(value: Any) -> Any:  # the JSON keeps summaries, the PNG the raw series
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("latencies_ms", "timeline")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    summary = {"settings": settings, "environment": environment, "total_s": total_s, **strip(results)}
    (args.out / "ray_scale.json").write_text(json.dumps(summary, indent=2))
    plot(results, args.out / "ray_scale.png")
    print(f"total {total_s:.0f} s; wrote {args.out / 'ray_scale.json'} and {args.out / 'ray_scale.png'}")


if __name__ == "__main__":
    main()
