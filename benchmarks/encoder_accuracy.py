"""Routing accuracy with the torch and the int8 ONNX encoder: the offline default pipeline's router
(its gate fitted on the experts' exemplars, top-1) on the public routing test set, both encoders in
one process on the same queries, so the difference is the encoder's alone.

Run: ``MOE_AGENTS_DATA_DIR=$(mktemp -d) python benchmarks/encoder_accuracy.py 400`` (per-label cap)
Writes ``benchmarks/results/encoder_accuracy.json`` (accuracies, seconds, every routed expert).
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio

from moe_agents import default_config_path, load_pipeline
from moe_agents.evaluation.data import routing_test_set
from moe_agents.evaluation.oos import route_all
from moe_agents.routing import OnnxEncoder, Router, SentenceEncoder

per_label = int(sys.argv[1])
items = routing_test_set(per_label=per_label, seed=0)
pipeline = load_pipeline(default_config_path())
experts = list(pipeline.experts.values())
out = {"n": len(items)}


async def run(enc):
    router = Router(
        replace(pipeline.router.config, top_k=1, gate_cache_dir=""), encoder=enc, rules=pipeline.router.rules
    )
    await router.prepare(experts)
    preds = [sel.experts[0] for sel in await route_all(router, [it.query() for it in items], experts)]
    return sum(p == it.label for p, it in zip(preds, items, strict=True)) / len(items), preds


for name, enc in (("torch", SentenceEncoder()), ("onnx-int8", OnnxEncoder())):
    t = time.perf_counter()
    acc, preds = anyio.run(run, enc)
    out[name] = {"accuracy": acc, "s": time.perf_counter() - t}
    out[name + "_preds"] = preds
    print(name, acc, flush=True)
same = sum(a == b for a, b in zip(out["torch_preds"], out["onnx-int8_preds"], strict=True))
out["agreement"] = same / len(items)
(Path(__file__).parent / "results" / "encoder_accuracy.json").write_text(json.dumps(out))
print("n", len(items), "agreement", out["agreement"])
