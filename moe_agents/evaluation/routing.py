"""The routing benchmark: five routers on the labelled test-split set, side by side in one run.

Routers (every one first drops experts that cannot take the query's attachments, as the pipeline
does):

1. ``keyword`` — the experts' keyword self-assessment alone (``can_handle``), the seed plan's
   heuristic;
2. ``centroid`` — nearest exemplar centroid (semantic-router style);
3. ``knn`` — k-nearest exemplars;
4. ``mlp`` — the gating network alone;
5. ``router`` — the full pipeline router (MLP gate × self-assessment × load), top-1.

Gates 2–4 and the router's gate are fitted on the experts' exemplars only (variant
``exemplars``) and, separately, on the exemplars plus the fit splits that
``routing_fit_set`` allows (variant ``exemplars+fit``). Nothing is fitted on the test set.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..experts.base import Expert
from ..routing.gates import fit_gate
from ..routing.router import Router
from ..types import Query
from .data import LabelledQuery, routing_fit_set, routing_test_set
from .metrics import RoutingScores, latency_summary, score_routing

__all__ = ["ROUTERS", "evaluate_routing"]

ROUTERS = ("keyword", "centroid", "knn", "mlp", "router")

Progress = Callable[[str], None]


async def evaluate_routing(
    experts: Sequence[Expert],
    router: Router,
    *,
    data_dir: str | Path | None = None,
    per_label: int = 400,
    fit_per_label: int = 200,
    seed: int = 0,
    latency_queries: int = 200,
    concurrent_queries: int = 256,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Runs the benchmark and returns a JSON-ready report.

    Args:
        experts: the pipeline's experts (their exemplars and ``can_handle`` are what is measured).
        router: the pipeline's router (its encoder, settings and extra exemplars are used).
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        per_label: cap per label of the test set.
        fit_per_label: cap per label of the fit-split exemplars of the ``exemplars+fit`` variant.
        seed: seed of the test-set sample.
        latency_queries: single queries timed one after another.
        concurrent_queries: queries routed together for the throughput measurement.
        progress: receives a short line as each step starts.

    Returns:
        ``{"set": ..., "variants": {variant: {router: scores}}, "speed": ..., ...}``; the
        ``RoutingScores`` objects are under ``"scores"`` for plotting.
    """
    say = progress or (lambda _: None)
    say("building the labelled test set")
    items = routing_test_set(data_dir, per_label=per_label, seed=seed)
    names = [e.name for e in experts]
    labels = [n for n in names if n in {i.label for i in items}]
    truth = [i.label for i in items]
    queries = [i.query() for i in items]

    say(f"embedding {len(items)} test queries")
    vectors = await anyio.to_thread.run_sync(router.encoder.encode, [q.text for q in queries])
    allowed = np.array([[e.accepts(q) for e in experts] for q in queries])  # (N, E)

    say("keyword self-assessment")
    keyword = await _keyword_predictions(experts, queries, allowed)

    fit_items = routing_fit_set(data_dir, per_label=fit_per_label, seed=seed)
    variants: dict[str, dict[str, RoutingScores]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for variant, fit_extra in (("exemplars", []), ("exemplars+fit", fit_items)):
        extra = {name: list(texts) for name, texts in router.extra_exemplars.items()}
        for item in fit_extra:
            extra.setdefault(item.label, []).append(item.text)
        full = Router(
            replace(router.config, top_k=1), encoder=router.encoder, rules=router.rules, exemplars=extra
        )
        exemplars = full.exemplars(experts)
        say(f"[{variant}] embedding {sum(map(len, exemplars.values()))} exemplars")
        ex_texts = [t for ts in exemplars.values() for t in ts]
        ex_labels = [n for n, ts in exemplars.items() for _ in ts]
        ex_vectors = await anyio.to_thread.run_sync(router.encoder.encode, ex_texts)
        scores: dict[str, RoutingScores] = {"keyword": score_routing(truth, keyword, labels)}
        for kind in ("centroid", "knn", "mlp"):
            say(f"[{variant}] fitting the {kind} gate")
            cfg = replace(router.config.gate, kind=kind)
            gate, report = await anyio.to_thread.run_sync(
                functools.partial(fit_gate, ex_vectors, ex_labels, list(exemplars), cfg)
            )
            reports.setdefault(variant, {})[kind] = report.to_dict()
            probs = _columns(gate.predict_proba(vectors), gate.experts, names)  # (N, E)
            scores[kind] = score_routing(truth, _argmax(probs, allowed, names), labels)
        say(f"[{variant}] full router on {len(queries)} queries")
        await full.prepare(experts)
        scores["router"] = score_routing(truth, await _route_all(full, queries, experts), labels)
        variants[variant] = scores

    say("timing single queries and concurrent routing")
    speed = await _speed(router, experts, queries, latency_queries, concurrent_queries)
    return {
        "set": {
            "n": len(items),
            "per_label": {lab: truth.count(lab) for lab in labels},
            "sources": _count_sources(items),
            "per_label_cap": per_label,
            "seed": seed,
        },
        "fit_set": {lab: sum(1 for i in fit_items if i.label == lab) for lab in labels},
        "variants": {v: {r: _scores_json(s) for r, s in rs.items()} for v, rs in variants.items()},
        "gates": reports,
        "speed": speed,
        "encoder": router.encoder.name,
        "scores": variants,
    }


async def _keyword_predictions(
    experts: Sequence[Expert], queries: Sequence[Query], allowed: np.ndarray
) -> list[str]:
    out = []
    for q, ok in zip(queries, allowed, strict=True):
        values = [await e.can_handle(q) if ok[j] else -1.0 for j, e in enumerate(experts)]
        out.append(experts[int(np.argmax(values))].name)
    return out


def _columns(probs: np.ndarray, gate_experts: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Gate probabilities rearranged into the pipeline's expert order (0 for unknown experts)."""
    index = {n: i for i, n in enumerate(gate_experts)}
    out = np.zeros((probs.shape[0], len(names)))
    for j, name in enumerate(names):
        if name in index:
            out[:, j] = probs[:, index[name]]
    return out


def _argmax(probs: np.ndarray, allowed: np.ndarray, names: Sequence[str]) -> list[str]:
    masked = np.where(allowed, probs, -1.0)
    return [names[int(i)] for i in masked.argmax(axis=1)]


async def _route_all(router: Router, queries: Sequence[Query], experts: Sequence[Expert]) -> list[str]:
    out = [""] * len(queries)

    async def one(i: int) -> None:
        out[i] = (await router.route(queries[i], experts)).experts[0]

    for start in range(0, len(queries), 256):
        async with anyio.create_task_group() as tg:
            for i in range(start, min(start + 256, len(queries))):
                tg.start_soon(one, i)
    return out


async def _speed(
    router: Router, experts: Sequence[Expert], queries: Sequence[Query], n_single: int, n_concurrent: int
) -> dict[str, Any]:
    """Single-query latency and concurrent throughput of the full router (embedding cache off, so
    every query is encoded), next to the raw encoder's batched throughput, all in this run."""
    await router.prepare(experts)
    fresh = Router(
        replace(router.config, cache_size=0), encoder=router.encoder, rules=router.rules, gate=router.gate
    )
    await fresh.prepare(experts)
    texts = [q.text for q in queries]
    await anyio.to_thread.run_sync(router.encoder.encode, texts[:64])  # warm-up

    raw: list[float] = []
    for q in queries[:n_single]:
        t = time.perf_counter()
        await anyio.to_thread.run_sync(router.encoder.encode, [q.text])
        raw.append(time.perf_counter() - t)

    single: list[float] = []
    for q in queries[:n_single]:
        t = time.perf_counter()
        await fresh.route(q, experts)
        single.append(time.perf_counter() - t)

    batch = [replace(q, text=f"{q.text} ") for q in queries[:n_concurrent]]  # not cached anywhere
    t = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for q in batch:
            tg.start_soon(fresh.route, q, experts)
    routed_s = time.perf_counter() - t

    t = time.perf_counter()
    for start in range(0, len(batch), 64):
        await anyio.to_thread.run_sync(router.encoder.encode, [q.text for q in batch[start : start + 64]])
    encoder_s = time.perf_counter() - t
    return {
        "single_query": latency_summary(single),
        "encoder_single_query": latency_summary(raw),
        "single_queries": len(single),
        "concurrent_queries": len(batch),
        "router_qps": len(batch) / routed_s,
        "encoder_batched_qps": len(batch) / encoder_s,
        "router_vs_encoder": (len(batch) / routed_s) / (len(batch) / encoder_s),
        "encoder_forwards": fresh.embedder.batches,
    }


def _scores_json(s: RoutingScores) -> dict[str, Any]:
    return {
        "accuracy": s.accuracy,
        "macro_f1": s.macro_f1,
        "per_label_accuracy": dict(s.per_label_accuracy),
        "per_label_count": dict(s.per_label_count),
        "confusion": {"labels": list(s.columns), "rows": s.labels, "matrix": s.confusion.tolist()},
        "n": s.n,
    }


def _count_sources(items: Sequence[LabelledQuery]) -> Mapping[str, int]:
    counts: dict[str, int] = {}
    for i in items:
        key = i.source.split("/")[0] if not i.source.startswith("mmlu/") else "mmlu"
        counts[f"{i.label}:{key}"] = counts.get(f"{i.label}:{key}", 0) + 1
    return counts
