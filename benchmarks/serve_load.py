"""HTTP serving under load: thousands of concurrent streams with faults, and what HTTP adds.

Two phases, each against a server in its own process on 127.0.0.1 (this script with ``--serve``:
uvicorn on ``create_app``), so that its memory and CPU are measured apart from the client's.

*Load.* ``--requests`` concurrent streaming chat completions through httpx, ``--bursts`` times,
against four experts whose test-double backends sleep 5-20 ms, then raise in 10 % of calls and
hang for 60 s, far past the expert's timeout (``--expert-timeout``, 5 s), in 5 % (default retries
and circuit breakers; the pipeline falls back to another expert when the chosen one fails).
Admission: 256 requests at once, 1,024 waiting, 20 s per request; the rest are refused at once
with a 429. The server's ``keepalive_s`` (2 s) is shorter than the expert timeout, so a stream
whose first expert hangs is committed (HTTP 200) before it fails over: both error paths run, a
status before any content and an in-band error frame after it. Every stream is read to its end:
*complete* (``data: [DONE]``), *error status* (4xx/5xx with OpenAI's ``{"error": ...}``), *error
frame* (an in-band ``data: {"error": ...}``, then the end) or *lost* (anything else: a dropped
connection, a malformed frame, a client-side timeout, an end without ``[DONE]`` or an error; goal
0). Afterwards the server is asked, through a debug route only this script's server has, how many
asyncio tasks it holds (goal: as many as before the load); its resident memory is sampled
throughout (goal: flat from the second burst to the last, within 5 MB; the first settles the
allocator) and its event loop's lag measured.

*Cost of HTTP.* A second server whose backends answer at once, and the same pipeline in this
process: p50/p95 latency of one request at a time (the same queries, interleaved; goal: HTTP adds
at most 2 ms at p50), and throughput with 256 requests in flight (the same number of requests
each way, in alternating rounds; goal: HTTP reaches 0.7x of in-process). The client and the
server share this machine's cores, so the HTTP figures include the client's own CPU; CPU time per
request is reported for each side, and the throughput ratio a client costing nothing would see
(in-process CPU per request over the server's).

The client: httpx, 16 connections per ``AsyncClient`` (``--per-client``). httpcore's pool looks at
every connection it holds on each request event, so 2,000 connections in one pool cost the client
CPU in proportion to their square and the client, not the server, would set the pace. The expert
timeout is 5 s rather than a fraction of a second because a burst of 2,000 requests keeps a
2-core server's event loop seconds behind; with ``--expert-timeout 0.5`` healthy calls time out.

Run: ``python benchmarks/serve_load.py [--requests 2000] [--concurrency-throughput 256] [--quick]``
Writes ``benchmarks/results/serve_load.json`` and ``benchmarks/results/serve_load.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import random
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import psutil
import structlog
from prompts import PROMPTS  # this folder: the requests every benchmark sends
from rich.console import Console
from rich.table import Table

from moe_agents import ExpertPolicy, LLMExpert, Pipeline, Router, RouterConfig
from moe_agents.core.observers import Observer
from moe_agents.errors import ExpertsFailed, MoEError
from moe_agents.reliability import GuardedBackend
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message, Query, Result

OUT = Path(__file__).parent / "results"
EXPERT_TIMEOUT_S = 5.0
HANG_S = 60.0
"""A hanging call sleeps this long: far past the expert's timeout, and past the moment the tasks
are counted, so a call that outlived its request would show up there."""
KEEPALIVE_S = 2.0
LAG_TICK_S = 0.01
MAX_CONCURRENCY = 256
MAX_QUEUE = 1024
REQUEST_TIMEOUT_S = 20.0
MAX_RSS_GROWTH_MB = 5.0
THROUGHPUT_ROUNDS = 4
TARGET_ADDED_P50_MS = 2.0
TARGET_THROUGHPUT_RATIO = 0.7


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")


class Mathy(LLMExpert):
    kind = "maths"
    default_exemplars = ("solve this equation", "what is 12 times 7", "compute the derivative")


class Scholar(LLMExpert):
    kind = "knowledge"
    default_exemplars = ("who discovered penicillin", "when did the war end", "what is the capital")


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "can machines think")


class Faults:
    """Backend replies: 10 % raise, 5 % hang for ``HANG_S``, the rest answer after 5–20 ms.

    Without faults every call answers at once. ``counts`` tallies what the calls did.
    """

    def __init__(self, seed: int, *, enabled: bool) -> None:
        self.rng = random.Random(seed)
        self.enabled = enabled
        self.counts: Counter[str] = Counter()

    def reply(self, name: str) -> Callable[[Sequence[Message]], Awaitable[str]]:
        async def reply(messages: Sequence[Message]) -> str:
            if not self.enabled:
                self.counts["answered"] += 1
                return f"{name} answers in a few words"
            await anyio.sleep(self.rng.uniform(0.005, 0.020))
            roll = self.rng.random()
            if roll < 0.10:
                self.counts["raised"] += 1
                raise RuntimeError(f"{name}: injected failure")
            if roll < 0.15:
                self.counts["hung"] += 1
                await anyio.sleep(HANG_S)
            self.counts["answered"] += 1
            return f"{name} answers in a few words"

        return reply


class ErrorCounts:
    """An observer counting the errors of expert calls (answered requests and failed ones) and
    of failed requests, by type."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()

    async def on_result(self, query: Query, result: Result) -> None:
        self.calls.update(type(e).__name__ for e in result.errors.values())

    async def on_failure(self, error: Exception, seconds: float) -> None:
        self.requests[type(error).__name__] += 1
        if isinstance(error, ExpertsFailed):
            self.calls.update(type(e).__name__ for e in error.errors.values())

    async def on_feedback(self, result: Result, score: float) -> None:
        """Nothing to count."""


def build(
    faults: Faults, args: argparse.Namespace, observers: Sequence[Observer] = ()
) -> tuple[Pipeline, list[FunctionBackend]]:
    """Four experts on ``FunctionBackend``s, a hashing router (no model loads), bounded admission."""
    policy = ExpertPolicy(max_load=10_000, timeout_s=args.expert_timeout)
    backends, experts = [], []
    for cls in (Coder, Mathy, Scholar, Talker):
        backend = FunctionBackend(faults.reply(cls.kind), name=cls.kind)
        backends.append(backend)
        experts.append(cls(backends=[backend], policy=policy))
    pipeline = Pipeline(
        experts,
        router=Router(RouterConfig(top_k=1), encoder=HashingEncoder()),
        request_timeout_s=REQUEST_TIMEOUT_S,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        observers=observers,
    )
    return pipeline, backends


def query(i: int, tag: str) -> str:
    """Distinct texts, so no cache of any kind answers a repeat."""
    return f"{PROMPTS[i % len(PROMPTS)]} ({tag} #{i})"


def serve(args: argparse.Namespace) -> None:
    """The server process: the pipeline behind ``create_app``, plus ``GET /_bench/state``."""
    import uvicorn

    from moe_agents.server import ServerConfig, create_app

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    set_torch_threads(args.torch_threads)
    faults = Faults(args.seed, enabled=args.faults)
    errors = ErrorCounts()
    pipeline, backends = build(faults, args, [errors])
    app = create_app(pipeline, ServerConfig(keepalive_s=args.keepalive))
    lags: list[float] = []

    def tick(due: float) -> None:  # a timer, not a task: it does not count among the tasks
        loop = asyncio.get_running_loop()
        lags.append(loop.time() - due)
        due = loop.time() + LAG_TICK_S
        loop.call_at(due, tick, due)

    @app.get("/_bench/state", include_in_schema=False)
    async def state(reset: bool = False) -> dict[str, Any]:
        """Tasks, requests in flight, what the backends did, and the event loop's lag (the delay
        of a 10 ms timer) since the last ``reset``."""
        if not lags:
            tick(asyncio.get_running_loop().time())
        for backend in backends:  # the test double's own record of calls is not the server's memory
            backend.calls.clear()
        lag_ms = [x * 1000 for x in lags]
        if reset:
            lags[:] = [0.0]
        return {
            "tasks": len(asyncio.all_tasks()),
            "in_flight": pipeline.admission.in_flight,
            "results_kept": len(pipeline._results),
            "backend_calls": dict(faults.counts),
            "expert_errors": dict(errors.calls),
            "failed_requests": dict(errors.requests),
            "breakers": {
                e.name: [b.breaker.state for b in e.backends if isinstance(b, GuardedBackend)]
                for e in pipeline.experts.values()
            },
            "loop_lag_ms": {"p99": pct(lag_ms, 99), "max": max(lag_ms)},
        }

    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096, timeout_keep_alive=30
    )


def set_torch_threads(n: int) -> None:
    """Intra-op threads of the router's gate (torch); 0 leaves torch's default."""
    if n:
        import torch

        torch.set_num_threads(n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running ``--serve`` process of this script."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def cpu_s(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system


@contextlib.asynccontextmanager
async def running(args: argparse.Namespace, *, faults: bool) -> AsyncIterator[Server]:
    """Starts a server process, waits until it is ready, and ends it on the way out."""
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--seed", str(args.seed)]
    cmd += ["--torch-threads", str(args.torch_threads), "--expert-timeout", str(args.expert_timeout)]
    cmd += ["--keepalive", str(args.keepalive), "--max-concurrency", str(args.max_concurrency)]
    cmd += ["--max-queue", str(args.max_queue)]
    if faults:
        cmd.append("--faults")
    with tempfile.TemporaryFile() as log:
        proc = await anyio.open_process(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            server = Server(port, proc.pid)
            async with httpx.AsyncClient(timeout=2) as client:
                with anyio.fail_after(120):
                    for _ in itertools.count():
                        if proc.returncode is not None:
                            log.seek(0)
                            raise SystemExit(
                                f"the server exited with {proc.returncode}:\n{log.read().decode()}"
                            )
                        with contextlib.suppress(httpx.TransportError):
                            if (await client.get(f"{server.url}/health/ready")).status_code == 200:
                                break
                        await anyio.sleep(0.1)
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.terminate()
                    with anyio.move_on_after(10):
                        await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if len(xs) else float("nan")


@contextlib.asynccontextmanager
async def clients(n: int, per_client: int, wait_s: float) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Enough ``httpx.AsyncClient``s for ``n`` connections, ``per_client`` each.

    One client would do, but httpcore's pool looks at every connection it holds on each request
    event: with ``n`` connections in one pool the client's CPU grows as ``n²`` and, on a small
    machine, the client rather than the server sets the pace. They share one TLS context, whose
    creation is the slow part of a client.
    """
    tls = ssl.create_default_context()
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(wait_s), verify=tls)
            )
            for _ in range(math.ceil(n / per_client))
        ]


# ---------------------------------------------------------------- load phase


@dataclass
class Outcome:
    """How one stream ended."""

    kind: str = "lost"  # complete | error_status | error_frame | lost
    detail: str = ""  # the status and error code, or why it is lost
    started_at: float = 0.0  # perf_counter() when the client began the request
    sent_at: float | None = None  # ... when the request was on the wire
    ended_at: float = 0.0
    seconds: float = 0.0  # from sent (or started, if never sent) to the end
    first_content_s: float | None = None
    keepalives: int = 0
    fallback: bool | None = None  # None: the stream started before the router had chosen


async def stream_one(client: httpx.AsyncClient, url: str, text: str, deadline_s: float) -> Outcome:
    """Sends one streaming request and reads it to its end (see the module docstring)."""
    out = Outcome(started_at=time.perf_counter())
    body = {"model": "moe-agents", "messages": [{"role": "user", "content": text}], "stream": True}
    start = out.started_at

    async def trace(event: str, info: dict[str, Any]) -> None:  # httpcore's request events
        nonlocal start
        if event == "http11.send_request_body.complete":
            out.sent_at = start = time.perf_counter()

    try:
        with anyio.fail_after(deadline_s):
            async with client.stream(
                "POST", f"{url}/v1/chat/completions", json=body, extensions={"trace": trace}
            ) as response:
                if response.status_code != 200:
                    raw = await response.aread()
                    try:
                        error = json.loads(raw)["error"]
                        out.kind, out.detail = "error_status", f"{response.status_code} {error['code']}"
                    except (ValueError, KeyError, TypeError):
                        out.detail = f"status {response.status_code} without an error envelope"
                    return out
                selected = response.headers.get("x-moe-experts", "")
                done = errored = False
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    if done or errored:
                        out.detail = "data after the end"
                        return out
                    if line.startswith(":"):
                        out.keepalives += 1
                        continue
                    if not line.startswith("data: "):
                        out.detail = f"malformed line {line[:40]!r}"
                        return out
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        continue
                    frame = json.loads(data)
                    if "error" in frame:
                        errored = True
                        out.detail = str(frame["error"]["code"])
                        continue
                    if frame.get("object") != "chat.completion.chunk":
                        out.detail = "a frame that is not a chunk"
                        return out
                    choice = frame["choices"][0] if frame["choices"] else {}
                    if choice.get("delta", {}).get("content") and out.first_content_s is None:
                        out.first_content_s = time.perf_counter() - start
                    if choice.get("finish_reason") == "stop" and selected:
                        out.fallback = frame["model"] != selected  # the backend that answered
                if done:
                    out.kind = "complete"
                elif errored:
                    out.kind = "error_frame"
                else:
                    out.detail = "ended without [DONE] or an error"
    except TimeoutError:
        out.detail = "client-side timeout"
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        out.detail = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        out.ended_at = time.perf_counter()
        out.seconds = out.ended_at - start
    return out


async def server_state(client: httpx.AsyncClient, server: Server, *, reset: bool = False) -> dict[str, Any]:
    params = {"reset": "true"} if reset else {}
    return (await client.get(f"{server.url}/_bench/state", params=params)).json()


async def settle(client: httpx.AsyncClient, server: Server, pause_s: float = 1.0) -> dict[str, Any]:
    """The server's state once no request is in flight and ``pause_s`` has passed."""
    for _ in range(300):
        if not (await server_state(client, server))["in_flight"]:
            break
        await anyio.sleep(0.1)
    await anyio.sleep(pause_s)
    return await server_state(client, server)


async def burst(
    server: Server, n: int, per_client: int, tag: str, rss_before: float
) -> tuple[list[Outcome], dict[str, float]]:
    """``n`` concurrent streams; the server's peak RSS and CPU meanwhile."""
    outcomes = [Outcome(detail="never finished")] * n
    stats = {"rss_peak_mb": rss_before}
    async with clients(n, per_client, 120) as pool:
        cpu, own = server.cpu_s(), time.process_time()
        start = time.perf_counter()

        async def one(i: int) -> None:
            outcomes[i] = await stream_one(pool[i // per_client], server.url, query(i, tag), 180)

        async with anyio.create_task_group() as tg:

            async def sample() -> None:
                while True:
                    stats["rss_peak_mb"] = max(stats["rss_peak_mb"], server.rss_mb())
                    await anyio.sleep(0.02)

            tg.start_soon(sample)
            async with anyio.create_task_group() as requests:
                for i in range(n):
                    requests.start_soon(one, i)
            tg.cancel_scope.cancel()
        stats["wall_s"] = time.perf_counter() - start
        stats["server_cpu_s"] = server.cpu_s() - cpu
        stats["client_cpu_s"] = time.process_time() - own
    return outcomes, stats


async def load_phase(args: argparse.Namespace) -> dict[str, Any]:
    async with running(args, faults=True) as server, httpx.AsyncClient(timeout=30) as control:
        for i in range(20):  # lazy imports, the gate's fit, first-call paths
            await stream_one(control, server.url, query(i, "warm-up"), 30)
        before = await settle(control, server)
        rss_before = server.rss_mb()
        bursts = []
        for b in range(args.bursts):
            prev = await server_state(control, server, reset=True)
            outcomes, stats = await burst(server, args.requests, args.per_client, f"burst {b}", rss_before)
            after = await settle(control, server)
            summary = burst_summary(outcomes, stats, server.rss_mb(), before, after)
            for key in ("backend_calls", "expert_errors", "failed_requests"):  # counted since start-up
                summary[key] = dict(Counter(after[key]) - Counter(prev[key]))
            bursts.append(summary)
        return {
            "settings": {
                "requests": args.requests,
                "experts": 4,
                "top_k": 1,
                "expert_timeout_s": args.expert_timeout,
                "hang_s": HANG_S,
                "keepalive_s": args.keepalive,
                "max_concurrency": args.max_concurrency,
                "max_queue": args.max_queue,
                "request_timeout_s": REQUEST_TIMEOUT_S,
                "faults": "10 % raise, 5 % hang, else 5-20 ms",
            },
            "tasks_before": before["tasks"],
            "rss_before_mb": rss_before,
            "bursts": bursts,
        }


def peak_open(outcomes: Sequence[Outcome]) -> int:
    """The most requests sent and not yet ended at one moment."""
    events = sorted(
        [(o.sent_at, 1) for o in outcomes if o.sent_at is not None]
        + [(o.ended_at, -1) for o in outcomes if o.sent_at is not None]
    )
    return max(itertools.accumulate(delta for _, delta in events), default=0)


def burst_summary(
    outcomes: list[Outcome],
    stats: dict[str, float],
    rss_after: float,
    before: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    kinds = Counter(o.kind for o in outcomes)
    complete = [o for o in outcomes if o.kind == "complete"]
    return {
        "complete": kinds["complete"],
        "error_status": kinds["error_status"],
        "error_frame": kinds["error_frame"],
        "lost": kinds["lost"],
        "error_statuses": dict(Counter(o.detail for o in outcomes if o.kind == "error_status")),
        "error_frames": dict(Counter(o.detail for o in outcomes if o.kind == "error_frame")),
        "lost_reasons": dict(Counter(o.detail for o in outcomes if o.kind == "lost")),
        "sent_within_s": max((o.sent_at or o.ended_at) for o in outcomes)
        - min(o.started_at for o in outcomes),
        "peak_open": peak_open(outcomes),
        "fallbacks": sum(o.fallback is True for o in complete),
        "selection_known": sum(o.fallback is not None for o in complete),
        "committed_by_keepalive": sum(o.keepalives > 0 for o in outcomes),
        "wall_s": stats["wall_s"],
        "streams_per_s": len(outcomes) / stats["wall_s"],
        "server_cpu_s": stats["server_cpu_s"],
        "client_cpu_s": stats["client_cpu_s"],
        "complete_s": {
            "p50": pct([o.seconds for o in complete], 50),
            "p99": pct([o.seconds for o in complete], 99),
        },
        "first_content_s": {
            "p50": pct([o.first_content_s for o in complete if o.first_content_s is not None], 50),
            "p99": pct([o.first_content_s for o in complete if o.first_content_s is not None], 99),
        },
        "rss_peak_mb": stats["rss_peak_mb"],
        "rss_after_mb": rss_after,
        "tasks_after": after["tasks"],
        "tasks_left": after["tasks"] - before["tasks"],
        "in_flight_after": after["in_flight"],
        "loop_lag_ms": after["loop_lag_ms"],
        "results_kept": after["results_kept"],
        "breakers_after": after["breakers"],
        "durations_s": [o.seconds for o in outcomes],
        "kinds": [o.kind for o in outcomes],
    }


# ---------------------------------------------------------------- cost of HTTP


@contextlib.contextmanager
def cpu_clock(server: Server) -> Iterator[dict[str, float]]:
    """CPU seconds of this process and of the server during the block."""
    out: dict[str, float] = {}
    own, srv = time.process_time(), server.cpu_s()
    yield out
    out["client"], out["server"] = time.process_time() - own, server.cpu_s() - srv


async def closed_loop(
    total: int, concurrency: int, call: Callable[[int, int], Awaitable[None]], *, first: int = 0
) -> float:
    """Seconds for ``total`` calls ``call(worker, i)`` (``i`` from ``first``) made by ``concurrency``
    workers, each starting its next call when its last one returned."""
    todo = iter(range(first, first + total))

    async def worker(w: int) -> None:
        for i in todo:
            await call(w, i)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(concurrency):
            tg.start_soon(worker, w)
    return time.perf_counter() - start


async def cost_phase(args: argparse.Namespace) -> dict[str, Any]:
    pipeline, _ = build(Faults(args.seed, enabled=False), args)
    c, per_client = args.concurrency_throughput, args.per_client
    outcomes: dict[str, Counter[str]] = {"in_process": Counter(), "http": Counter()}
    async with running(args, faults=False) as server, pipeline, clients(c, per_client, 60) as pool:

        async def http(w: int, text: str) -> None:
            body = {"model": "moe-agents", "messages": [{"role": "user", "content": text}]}
            response = await pool[w // per_client].post(f"{server.url}/v1/chat/completions", json=body)
            reply = response.json()
            ok = response.status_code == 200 and reply["choices"][0]["message"]["content"]
            outcomes["http"]["ok" if ok else f"{response.status_code} {reply['error']['code']}"] += 1

        async def local(text: str) -> None:
            try:
                await pipeline.run(text)
            except MoEError as exc:
                outcomes["in_process"][type(exc).__name__] += 1
            else:
                outcomes["in_process"]["ok"] += 1

        for i in range(50):
            await local(query(i, "warm-up"))
            await http(0, query(i, "warm-up"))

        in_ms, http_ms, bare_ms = [], [], []
        for i in range(args.sequential):  # interleaved: drift in the machine hits all alike
            text = query(i, "sequential")
            t = time.perf_counter()
            await local(text)
            in_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await http(0, text)
            http_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            (await pool[0].get(f"{server.url}/health/live")).raise_for_status()  # HTTP alone
            bare_ms.append((time.perf_counter() - t) * 1000)

        # in rounds, in-process and HTTP in turn (ABBA): background load hits both alike
        async def in_process_call(w: int, i: int) -> None:
            await local(query(i, "throughput"))

        async def http_call(w: int, i: int) -> None:
            await http(w, query(i, "throughput"))

        calls = {"in_process": in_process_call, "http": http_call}
        rounds = THROUGHPUT_ROUNDS
        per_round = args.throughput_requests // rounds
        walls = {"in_process": 0.0, "http": 0.0}
        cpu = {"in_process": 0.0, "server": 0.0, "client": 0.0}
        for r in range(rounds):
            for way in ("in_process", "http") if r % 2 == 0 else ("http", "in_process"):
                with cpu_clock(server) as used:
                    walls[way] += await closed_loop(per_round, c, calls[way], first=r * per_round)
                if way == "in_process":
                    cpu["in_process"] += used["client"]
                else:
                    cpu["server"] += used["server"]
                    cpu["client"] += used["client"]
        n = per_round * rounds

    paired = [h - i for h, i in zip(http_ms, in_ms, strict=True)]
    return {
        "sequential": {
            "requests": args.sequential,
            "in_process_ms": {"p50": pct(in_ms, 50), "p95": pct(in_ms, 95)},
            "http_ms": {"p50": pct(http_ms, 50), "p95": pct(http_ms, 95)},
            "added_ms": {"p50": pct(http_ms, 50) - pct(in_ms, 50), "p95": pct(http_ms, 95) - pct(in_ms, 95)},
            "paired_added_ms_p50": pct(paired, 50),
            "bare_round_trip_ms": {"p50": pct(bare_ms, 50), "p95": pct(bare_ms, 95)},
            "in_process_latencies_ms": in_ms,
            "http_latencies_ms": http_ms,
        },
        "throughput": {
            "requests": n,
            "concurrency": c,
            "rounds": rounds,
            "in_process_rps": n / walls["in_process"],
            "http_rps": n / walls["http"],
            "ratio": walls["in_process"] / walls["http"],
            "server_bound_ratio": cpu["in_process"] / cpu["server"],
            "cpu_ms_per_request": {
                "in_process": cpu["in_process"] / n * 1000,
                "http_server": cpu["server"] / n * 1000,
                "http_client": cpu["client"] / n * 1000,
            },
        },
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
    }


# ---------------------------------------------------------------- report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seq = report["cost"]["sequential"]
    burst = report["load"]["bursts"][0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    ax = axes[0]
    hi = pct(seq["http_latencies_ms"], 99) * 1.2
    bins = np.linspace(0, hi, 60)
    ax.hist(np.clip(seq["in_process_latencies_ms"], 0, hi), bins=bins, alpha=0.6, label="in-process")
    ax.hist(np.clip(seq["http_latencies_ms"], 0, hi), bins=bins, alpha=0.6, label="HTTP (127.0.0.1)")
    ax.set_title(f"one request at a time: {seq['requests']} requests")
    ax.set_xlabel("latency (ms)")
    ax.legend()
    ax = axes[1]
    bins = np.linspace(0, max(burst["durations_s"]) * 1.02, 60)
    for kind in ("complete", "error_status", "error_frame", "lost"):
        xs = [d for d, k in zip(burst["durations_s"], burst["kinds"], strict=True) if k == kind]
        if xs:
            ax.hist(xs, bins=bins, alpha=0.6, label=f"{kind} ({len(xs)})")
    ax.set_title(f"{report['load']['settings']['requests']} concurrent streams with faults (burst 1)")
    ax.set_xlabel("stream duration (s)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def render(report: dict[str, Any], console: Console) -> None:
    load, cost = report["load"], report["cost"]
    s = load["settings"]
    table = Table(
        title=(
            f"moe-agents over HTTP: {s['requests']} concurrent streams x {len(load['bursts'])} bursts with "
            f"faults ({s['faults']}; expert timeout {s['expert_timeout_s']} s), then the cost of HTTP"
        ),
        title_justify="left",
    )
    for column in ("measure", "value", "target", ""):
        table.add_column(column, justify="left" if column in ("measure", "value") else "right")
    for b, r in enumerate(load["bursts"], 1):
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(r["error_statuses"].items())) or "none"
        frames = ", ".join(f"{k} x{v}" for k, v in sorted(r["error_frames"].items())) or "none"
        table.add_row(
            f"burst {b}: complete streams ([DONE])",
            f"{r['complete']} (by a fallback expert: {r['fallbacks']} of the {r['selection_known']} "
            "whose selection came in the headers)",
            "",
            "",
        )
        table.add_row(f"burst {b}: typed errors, HTTP status", f"{r['error_status']} ({statuses})", "", "")
        table.add_row(f"burst {b}: typed errors, in-band frame", f"{r['error_frame']} ({frames})", "", "")
        lost = ", ".join(f"{k} x{v}" for k, v in r["lost_reasons"].items())
        table.add_row(
            f"burst {b}: lost", f"{r['lost']}" + (f" ({lost})" if lost else ""), "0", verdict(r["lost"] == 0)
        )
        table.add_row(
            f"burst {b}: server tasks after − before",
            f"{r['tasks_after']} − {load['tasks_before']} = {r['tasks_left']} "
            f"(in flight {r['in_flight_after']})",
            "0",
            verdict(r["tasks_left"] == 0 and r["in_flight_after"] == 0),
        )
        calls = r["backend_calls"]
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r["expert_errors"].items())) or "none"
        table.add_row(
            f"burst {b}: backend calls; expert call errors",
            f"{sum(calls.values())} ({calls.get('raised', 0)} raised, {calls.get('hung', 0)} hung); {errors}",
            "",
            "",
        )
        table.add_row(
            f"burst {b}: all sent within; most open at once",
            f"{r['sent_within_s']:.1f} s; {r['peak_open']}",
            "",
            "",
        )
        table.add_row(
            f"burst {b}: wall, streams/s, complete p50 / p99",
            f"{r['wall_s']:.1f} s, {r['streams_per_s']:.0f}/s, "
            f"{r['complete_s']['p50']:.2f} / {r['complete_s']['p99']:.2f} s",
            "",
            "",
        )
        table.add_row(
            f"burst {b}: CPU server / client; server loop lag p99 / max",
            f"{r['server_cpu_s']:.1f} / {r['client_cpu_s']:.1f} s; "
            f"{r['loop_lag_ms']['p99']:.0f} / {r['loop_lag_ms']['max']:.0f} ms",
            "",
            "",
        )
        table.add_row(
            f"burst {b}: server RSS before / peak / after",
            f"{load['rss_before_mb']:.0f} / {r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f} MB",
            "",
            "",
        )
    bounded = report["memory_bounded"]
    table.add_row(
        f"server RSS after burst {len(load['bursts'])} − after burst {bounded['since_burst']}",
        f"{bounded['growth_mb']:+.1f} MB",
        f"≤ {bounded['limit_mb']:.0f} MB",
        verdict(bounded["ok"]),
    )
    seq, thr = cost["sequential"], cost["throughput"]
    table.add_row(
        f"p50 latency, one at a time ({seq['requests']}): in-process / HTTP",
        f"{seq['in_process_ms']['p50']:.2f} / {seq['http_ms']['p50']:.2f} ms",
        "",
        "",
    )
    added = seq["added_ms"]["p50"]
    table.add_row(
        "added by HTTP at p50 (paired p50)",
        f"{added:.2f} ms ({seq['paired_added_ms_p50']:.2f} ms)",
        f"≤ {TARGET_ADDED_P50_MS:.0f} ms",
        verdict(added <= TARGET_ADDED_P50_MS),
    )
    table.add_row(
        "  of which a bare round trip (GET /health/live, p50)",
        f"{seq['bare_round_trip_ms']['p50']:.2f} ms",
        "",
        "",
    )
    table.add_row(
        "p95 latency: in-process / HTTP",
        f"{seq['in_process_ms']['p95']:.2f} / {seq['http_ms']['p95']:.2f} ms",
        "",
        "",
    )
    table.add_row(
        f"throughput, {thr['concurrency']} in flight ({thr['requests']} requests each, {thr['rounds']} "
        "alternating rounds): in-process / HTTP",
        f"{thr['in_process_rps']:.0f} / {thr['http_rps']:.0f} req/s",
        "",
        "",
    )
    table.add_row(
        "HTTP / in-process throughput",
        f"{thr['ratio']:.2f}x",
        f"≥ {TARGET_THROUGHPUT_RATIO}x",
        verdict(thr["ratio"] >= TARGET_THROUGHPUT_RATIO),
    )
    cpu = thr["cpu_ms_per_request"]
    table.add_row(
        "CPU per request: in-process / HTTP server / HTTP client",
        f"{cpu['in_process']:.2f} / {cpu['http_server']:.2f} / {cpu['http_client']:.2f} ms",
        "",
        "",
    )
    table.add_row(
        "  ratio with a free client (in-process CPU / server CPU per request)",
        f"{thr['server_bound_ratio']:.2f}x",
        "",
        "",
    )
    console.print(table)
    env = report["environment"]
    console.print(
        f"{env['cpus']} CPU cores shared by the client (httpx {env['httpx']}) and the server (uvicorn "
        f"{env['uvicorn']}, HTTP/1.1 via {env['uvicorn_http']}), {env['loop']} event loops; the HTTP "
        "figures include the client's CPU, in-process runs on one core. Load average (1 min) before "
        f"{env['load_average_1min']['before']:.1f}, after {env['load_average_1min']['after']:.1f}: "
        "other work on the machine slows the server and the client alike."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="concurrent streams per burst")
    parser.add_argument(
        "--bursts", type=int, default=3, help="load bursts (memory must not grow between them)"
    )
    parser.add_argument("--sequential", type=int, default=300, help="requests one at a time, each way")
    parser.add_argument("--concurrency-throughput", type=int, default=256)
    parser.add_argument("--throughput-requests", type=int, default=4096, help="requests per throughput run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads, server and in-process (0: default)",
    )
    parser.add_argument(
        "--expert-timeout", type=float, default=EXPERT_TIMEOUT_S, help="seconds per expert call"
    )
    parser.add_argument(
        "--keepalive", type=float, default=KEEPALIVE_S, help="the server's keepalive_s (streams)"
    )
    parser.add_argument("--max-concurrency", type=int, default=MAX_CONCURRENCY, help="requests at once")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests waiting for a slot")
    parser.add_argument("--per-client", type=int, default=16, help="connections per httpx client")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one burst")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--faults", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.quick:
        args.requests, args.bursts, args.sequential = 200, 1, 50
        args.throughput_requests = 2 * args.concurrency_throughput
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    set_torch_threads(args.torch_threads)
    console = Console(width=150)

    async def measure() -> dict[str, Any]:
        console.print(f"load: {args.bursts} x {args.requests} concurrent streams ...")
        load = await load_phase(args)
        console.print("cost of HTTP: sequential and throughput ...")
        return {"load": load, "cost": await cost_phase(args)}

    uvloop = importlib.util.find_spec("uvloop") is not None  # as uvicorn's server: the same loop both ways
    load_before = os.getloadavg()[0]
    report = anyio.run(measure, backend_options={"use_uvloop": uvloop})
    bursts = report["load"]["bursts"]
    since = 1 if len(bursts) >= 3 else 0  # the first burst settles the allocator's arenas (a few MB)
    growth = bursts[-1]["rss_after_mb"] - bursts[since]["rss_after_mb"]
    report["memory_bounded"] = {
        "growth_mb": growth,
        "since_burst": since + 1,
        "limit_mb": MAX_RSS_GROWTH_MB,
        "ok": growth <= MAX_RSS_GROWTH_MB,
    }
    import uvicorn

    report["environment"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "uvicorn": uvicorn.__version__,
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "loop": "uvloop" if uvloop else "asyncio",
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    render(report, console)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(report, args.out / "serve_load.png")
    trimmed = json.loads(json.dumps(report))
    for burst in trimmed["load"]["bursts"]:
        del burst["durations_s"], burst["kinds"]
    del (
        trimmed["cost"]["sequential"]["in_process_latencies_ms"],
        trimmed["cost"]["sequential"]["http_latencies_ms"],
    )
    trimmed["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "serve_load.json").write_text(json.dumps(trimmed, indent=2))
    console.print(f"wrote {args.out / 'serve_load.json'} and {args.out / 'serve_load.png'}")


if __name__ == "__main__":
    main()
