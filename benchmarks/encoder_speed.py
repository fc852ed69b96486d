"""Sentence-encoder speed for routing: the torch encoder against the int8 ONNX Runtime encoder (and
the float ONNX export), in one run, each in its own fresh process.

Each runtime runs in a subprocess of this script (torch's thread settings are per process, and
the second runtime must not inherit the first one's warm caches or threads), one after another:

* **short query**: one CLINC ``small_talk`` test query at a time (``encode([text])``), p50/p95;
* **long text**: one MMLU question or HumanEval prompt at a time, p50/p95;
* **batched**: all the long texts in one ``encode`` call (the encoder's own batching), queries/s;
* **route**: the full ``Router.route`` (four experts with exemplars, MLP gate, embedding cache
  off, so every query is encoded) on the short queries and on the long ones, p50;
* **CPU per encode**: process CPU time over each loop divided by the encodes (it includes any
  OpenMP threads spinning after a forward, which wall time on a busy machine hides);
* **agreement**: cosine and largest absolute difference of every runtime's embeddings to the torch
  encoder's (float32), on the same texts.

Texts come from the public routing test set (``moe_agents.evaluation.data.routing_test_set``;
``$MOE_AGENTS_EVAL_DATA``). The ONNX export is cached (``$MOE_AGENTS_CACHE_DIR/onnx`` or the user
cache folder); the first run exports it (tens of seconds, not timed here). CPU timings on a shared
machine are noisy: compare the columns of one run, and prefer the CPU figures.

With ``--accuracy`` it also runs ``moe-agents eval routing --no-peer --no-oos`` on the offline
default pipeline once per runtime (minutes each) and reports the full router's accuracy with each
encoder: the default runtime is ONNX only if it is within 0.5 points of torch.

Run: ``python benchmarks/encoder_speed.py [--short 200] [--long 64] [--accuracy]``
Writes ``benchmarks/results/encoder_speed.json`` and ``benchmarks/results/encoder_speed.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).parent / "results"
RUNTIMES = {
    "torch": "SentenceEncoder() — today's router encoder",
    "torch-1thread": "SentenceEncoder(threads=1)",
    "onnx-int8": "OnnxEncoder() — router.encoder_runtime: onnx",
    "onnx-fp32": "OnnxEncoder(quantize=False)",
}
TARGETS = {"route_short_p50_ms": 5.0, "route_long_p50_ms": 12.0, "batched_qps_vs_30": 3.0}


def texts(short: int, long: int) -> tuple[list[str], list[str]]:
    """Short chat queries (CLINC small_talk) and long prompts (MMLU, HumanEval) from the test set."""
    from moe_agents.evaluation.data import routing_test_set

    items = routing_test_set(per_label=400, seed=0)
    shorts = [i.text for i in items if i.source.startswith("clinc/")][:short]
    longs = [i.text for i in items if i.source == "humaneval" or i.source.startswith("mmlu/")]
    longs = sorted(longs, key=len, reverse=True)[:long]  # the longest: the hard case
    return shorts, longs


def make_encoder(runtime: str) -> Any:
    from moe_agents.routing import OnnxEncoder, SentenceEncoder

    return {
        "torch": lambda: SentenceEncoder(),
        "torch-1thread": lambda: SentenceEncoder(threads=1),
        "onnx-int8": lambda: OnnxEncoder(),
        "onnx-fp32": lambda: OnnxEncoder(quantize=False),
    }[runtime]()


def timed(fn: Callable[[str], object], inputs: Sequence[str]) -> tuple[list[float], float]:
    """Wall seconds of each call, and process CPU seconds per call over the loop."""
    walls = []
    cpu = time.process_time()
    for text in inputs:
        t = time.perf_counter()
        fn(text)
        walls.append(time.perf_counter() - t)
    return walls, (time.process_time() - cpu) / len(inputs)


def ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000)


def measure(runtime: str, short: int, long: int, vectors_out: Path) -> dict[str, Any]:
    """Every measurement for one runtime (run in its own process)."""
    import anyio

    from moe_agents import ExpertPolicy, Query, Router, RouterConfig
    from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, ReasoningExpert
    from moe_agents.routing import GateConfig, fit_gate
    from moe_agents.testing import FunctionBackend

    shorts, longs = texts(short, long)
    enc = make_encoder(runtime)
    t = time.perf_counter()
    enc.encode(["load the model before timing anything"])
    load_s = time.perf_counter() - t
    for text in shorts[:10]:
        enc.encode([text])  # warm-up
    r: dict[str, Any] = {"runtime": runtime, "what": RUNTIMES[runtime], "load_s": load_s}

    walls, cpu = timed(lambda s: enc.encode([s]), shorts)
    r |= {"short_p50_ms": ms(walls, 50), "short_p95_ms": ms(walls, 95), "short_cpu_ms": cpu * 1000}
    walls, cpu = timed(lambda s: enc.encode([s]), longs)
    r |= {"long_p50_ms": ms(walls, 50), "long_p95_ms": ms(walls, 95), "long_cpu_ms": cpu * 1000}
    cpu0, t = time.process_time(), time.perf_counter()
    enc.encode(longs)
    wall = time.perf_counter() - t
    r |= {
        "batched_qps": len(longs) / wall,
        "batched_cpu_ms": (time.process_time() - cpu0) / len(longs) * 1000,
    }

    experts = [
        cls(backends=[FunctionBackend(lambda _: "ok", name=f"b{i}")], policy=ExpertPolicy(max_load=1000))
        for i, cls in enumerate((CodingExpert, ReasoningExpert, KnowledgeExpert, EpistemicExpert))
    ]
    # the gate is fitted here, once, so that the router's own first-use work (cache look-ups,
    # any tuning or cross-validation it is configured for) stays out of the timing
    names = [e.name for e in experts]
    exemplar_texts = [t for e in experts for t in e.exemplars]
    labels = [e.name for e in experts for _ in e.exemplars]
    gate, _ = fit_gate(enc.encode(exemplar_texts), labels, names, GateConfig())
    router = Router(RouterConfig(cache_size=0), encoder=enc, gate=gate)

    async def routes(inputs: Sequence[str]) -> tuple[list[float], float]:
        await router.prepare(experts)
        for text in inputs[:5]:
            await router.route(Query(text), experts)  # warm-up
        walls = []
        cpu = time.process_time()
        for text in inputs:
            t = time.perf_counter()
            await router.route(Query(text), experts)
            walls.append(time.perf_counter() - t)
        return walls, (time.process_time() - cpu) / len(inputs)

    walls, cpu = anyio.run(routes, shorts)
    r |= {
        "route_short_p50_ms": ms(walls, 50),
        "route_short_p95_ms": ms(walls, 95),
        "route_short_cpu_ms": cpu * 1000,
    }
    walls, cpu = anyio.run(routes, longs)
    r |= {"route_long_p50_ms": ms(walls, 50), "route_long_cpu_ms": cpu * 1000}
    np.save(vectors_out, enc.encode([*shorts, *longs]))
    return r


def accuracy(runtime: str, per_label: int) -> dict[str, Any]:
    """``moe-agents eval routing`` on the offline default pipeline with ``router.encoder_runtime``."""
    from moe_agents import default_config_path

    with tempfile.TemporaryDirectory(prefix="encoder-speed-") as tmp:
        folder = Path(tmp) / "configs"
        shutil.copytree(default_config_path().parent, folder)
        config = folder / "default.yaml"
        text = config.read_text()
        config.write_text(text.replace("router:\n", f"router:\n  encoder_runtime: {runtime}\n", 1))
        out = Path(tmp) / "report.json"
        env = {**os.environ, "MOE_AGENTS_DATA_DIR": str(Path(tmp) / "data")}
        script = "from moe_agents.cli import main; main()"
        cmd = [sys.executable, "-c", script, "eval", "routing", "--config", str(config)]
        cmd += ["--no-peer", "--no-oos", "--per-label", str(per_label), "--json", str(out)]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        report = json.loads(out.read_text())
    variants = report["variants"]
    return {
        "runtime": runtime,
        "encoder": report.get("encoder"),
        "n": report["set"]["n"],
        "s": time.perf_counter() - t,
        "accuracy": {v: {r: s["accuracy"] for r, s in rs.items()} for v, rs in variants.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", type=int, default=200, help="short chat queries timed")
    parser.add_argument("--long", type=int, default=64, help="long texts timed (and batched)")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=list(RUNTIMES))
    parser.add_argument("--accuracy", action="store_true", help="also run the routing benchmark per runtime")
    parser.add_argument("--per-label", type=int, default=400, help="test-set cap per label (--accuracy)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one runtime
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
        print(json.dumps(measure(args.worker, args.short, args.long, args.vectors)))
        return

    from rich.console import Console
    from rich.progress import Progress

    console = Console()
    results: dict[str, dict[str, Any]] = {}
    vectors: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console, transient=True) as progress:
        task = progress.add_task("runtimes", total=len(args.runtimes))
        for runtime in args.runtimes:
            progress.update(task, description=f"measuring {runtime}")
            path = Path(tmp) / f"{runtime}.npy"
            cmd = [sys.executable, __file__, "--worker", runtime, "--vectors", str(path)]
            cmd += ["--short", str(args.short), "--long", str(args.long)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results[runtime] = json.loads(done.stdout.strip().splitlines()[-1])
            vectors[runtime] = np.load(path)
            progress.advance(task)
    if "torch" in vectors:
        for runtime, v in vectors.items():
            cos = (v * vectors["torch"]).sum(axis=1)
            results[runtime] |= {
                "cosine_to_torch_min": float(cos.min()),
                "cosine_to_torch_mean": float(cos.mean()),
                "max_abs_diff_to_torch": float(np.abs(v - vectors["torch"]).max()),
            }
    acc: dict[str, Any] = {}
    if args.accuracy:
        for runtime in ("torch", "onnx"):
            console.print(f"routing accuracy with encoder_runtime: {runtime} (minutes) ...")
            acc[runtime] = accuracy(runtime, args.per_label)
    render(console, results, acc, args)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("worker", "vectors")}
        | {"out": str(args.out)},
        "cpu": os.cpu_count(),
        "load_average": os.getloadavg(),
        "targets": TARGETS,
        "results": results,
        "accuracy": acc,
    }
    (args.out / "encoder_speed.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out / "encoder_speed.png")
    console.print(f"wrote {args.out / 'encoder_speed.json'} and {args.out / 'encoder_speed.png'}")


ROWS = [
    ("short query p50 (ms)", "short_p50_ms", ".1f"),
    ("short query p95 (ms)", "short_p95_ms", ".1f"),
    ("short query CPU per encode (ms)", "short_cpu_ms", ".1f"),
    ("long text p50 (ms)", "long_p50_ms", ".1f"),
    ("long text CPU per encode (ms)", "long_cpu_ms", ".1f"),
    ("batched long texts (q/s)", "batched_qps", ".1f"),
    ("batched CPU per text (ms)", "batched_cpu_ms", ".1f"),
    ("Router.route short p50 (ms) [≤ 5]", "route_short_p50_ms", ".1f"),
    ("Router.route short p95 (ms)", "route_short_p95_ms", ".1f"),
    ("Router.route short CPU (ms)", "route_short_cpu_ms", ".1f"),
    ("Router.route long p50 (ms) [≤ 12]", "route_long_p50_ms", ".1f"),
    ("cosine to torch, min", "cosine_to_torch_min", ".4f"),
    ("cosine to torch, mean", "cosine_to_torch_mean", ".4f"),
    ("max |diff| to torch", "max_abs_diff_to_torch", ".4f"),
    ("load (s, export cached)", "load_s", ".1f"),
]


def render(console: Any, results: dict[str, dict[str, Any]], acc: dict[str, Any], args: Any) -> None:
    from rich.table import Table

    table = Table(title=f"encoder speed: {args.short} short queries, {args.long} long texts, one run")
    table.add_column("measure")
    for runtime in results:
        table.add_column(runtime, justify="right")
    base = results.get("torch")
    if base is not None and "onnx-int8" in results:
        table.add_column("int8 vs torch", justify="right")
    for label, key, fmt in ROWS:
        row = [label, *(format(r[key], fmt) if key in r else "-" for r in results.values())]
        if base is not None and "onnx-int8" in results:
            a, b = results["onnx-int8"].get(key), base.get(key)
            row.append(f"{a / b:.2f}x" if a is not None and b and not key.startswith(("cos", "max")) else "")
        table.add_row(*row)
    console.print(table)
    if acc:
        t2 = Table(title="routing accuracy, public test set (moe-agents eval routing --no-peer --no-oos)")
        t2.add_column("gates fitted on / router")
        for runtime in acc:
            t2.add_column(f"{runtime} ({acc[runtime]['n']} q)", justify="right")
        t2.add_column("onnx − torch (points)", justify="right")
        first = next(iter(acc.values()))["accuracy"]
        for variant, routers in first.items():
            for name in routers:
                vals = [acc[rt]["accuracy"][variant][name] for rt in acc]
                diff = (vals[-1] - vals[0]) * 100 if len(vals) == 2 else float("nan")
                t2.add_row(f"{variant} / {name}", *(f"{v:.2%}" for v in vals), f"{diff:+.2f}")
        console.print(t2)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("Router.route p50, short query (ms)", "route_short_p50_ms", 5.0),
        ("Router.route p50, long text (ms)", "route_long_p50_ms", 12.0),
        ("batched long texts (q/s)", "batched_qps", 90.0),
        ("CPU per short encode (ms)", "short_cpu_ms", None),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    names = list(results)
    for ax, (title, key, target) in zip(axes, panels, strict=True):
        ax.bar(names, [results[n][key] for n in names], color=["#888", "#aaa", "#2a7", "#7b5"][: len(names)])
        if target is not None:
            ax.axhline(target, color="red", linestyle="--", linewidth=1, label="target")
            ax.legend()
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
