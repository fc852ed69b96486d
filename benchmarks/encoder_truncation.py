"""How far the router's encoder can truncate texts: routing accuracy and long-text encoding time at
several ``max_length`` settings, in one process on the same queries.

The offline default pipeline's router (its gate fitted on the experts' exemplars, top-1, gate cache
off) routes the whole public routing test set once per setting, with the float ONNX export of the
bundled encoder (``encoder_runtime: onnx-fp32``: the torch encoder's embeddings to 1e-6, so the
256-token row is today's router) or the encoder named by ``--runtime``. Reported per setting:
accuracy (overall and text only), agreement of the routing decisions with the first setting's, and
p50 of encoding the 40 longest test texts one at a time (``encode([text])``) and as one batch.

The exemplars are short (well under 64 tokens), so every setting fits the same gate; only the
queries are cut.

Run: ``python benchmarks/encoder_truncation.py [--lengths 256 128 64] [--runtime onnx-fp32]``
Writes ``benchmarks/results/encoder_truncation.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from rich.console import Console
from rich.table import Table

from moe_agents import default_config_path, load_pipeline
from moe_agents.evaluation.data import LabelledQuery, routing_test_set
from moe_agents.evaluation.oos import route_all
from moe_agents.routing import Encoder, OnnxEncoder, Router, SentenceEncoder

OUT = Path(__file__).parent / "results"


def encoder(runtime: str, max_length: int) -> Encoder:
    if runtime == "torch":
        return SentenceEncoder(max_length=max_length)
    return OnnxEncoder(quantize=runtime == "onnx", max_length=max_length)


async def routed(enc: Encoder, items: list[LabelledQuery]) -> list[str]:
    pipeline = load_pipeline(default_config_path())
    experts = list(pipeline.experts.values())
    config = replace(pipeline.router.config, top_k=1, gate_cache_dir="")
    router = Router(config, encoder=enc, rules=pipeline.router.rules)
    await router.prepare(experts)
    return [sel.experts[0] for sel in await route_all(router, [it.query() for it in items], experts)]


def timings(enc: Encoder, long: list[str]) -> dict[str, float]:
    enc.encode(long[:2])  # load and warm up
    single = []
    for text in long:
        start = time.perf_counter()
        enc.encode([text])
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    enc.encode(long)
    batch = time.perf_counter() - start
    return {"long_p50_ms": float(np.median(single) * 1000), "batched_qps": len(long) / batch}


def main(lengths: list[int], runtime: str, out: Path) -> None:
    items = routing_test_set(per_label=400, seed=0)
    long = sorted((it.text for it in items), key=len)[-40:]
    text_only = np.array([not it.attachments for it in items])
    labels = np.array([it.label for it in items])
    rows: dict[int, dict[str, Any]] = {}
    first: np.ndarray | None = None
    for n in lengths:
        enc = encoder(runtime, n)
        speed = timings(enc, long)
        chosen = np.array(anyio.run(routed, enc, items))
        first = chosen if first is None else first
        right = chosen == labels
        rows[n] = {
            "accuracy": float(right.mean()),
            "text_accuracy": float(right[text_only].mean()),
            "agreement": float(np.mean(chosen == first)),
            **speed,
        }
        print(f"max_length {n}: {rows[n]}", flush=True)
    table = Table(title=f"routing with {runtime} at several max_length ({len(items)} test queries)")
    columns = ("max_length", "accuracy", "text only", "same route as first", "long p50 ms", "batched q/s")
    for column in columns:
        table.add_column(column, justify="right")
    for n, r in rows.items():
        table.add_row(
            str(n),
            f"{r['accuracy']:.2%}",
            f"{r['text_accuracy']:.2%}",
            f"{r['agreement']:.1%}",
            f"{r['long_p50_ms']:.1f}",
            f"{r['batched_qps']:.1f}",
        )
    Console().print(table)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "encoder_truncation.json"
    path.write_text(json.dumps({"runtime": runtime, "n": len(items), "results": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 128, 64])
    parser.add_argument("--runtime", choices=["onnx-fp32", "onnx", "torch"], default="onnx-fp32")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    main(args.lengths, args.runtime, args.out)
