"""The routing benchmark: five routers and a peer on the labelled test-split set, side by side in
one run, with confidence intervals, a paired test, calibration and out-of-scope handling.

Routers (every one but the peer first drops experts that cannot take the query's attachments, as the
pipeline does):

1. ``keyword`` — the experts' keyword self-assessment alone (``can_handle``), the seed plan's
   heuristic;
2. ``centroid`` — nearest exemplar centroid (semantic-router style);
3. ``knn`` — k-nearest exemplars;
4. ``mlp`` — the gating network alone;
5. ``router`` — the full pipeline router (MLP gate × self-assessment × load), top-1;
6. ``semantic-router`` — the peer: semantic-router's default ``IndexedRouter`` with the same encoder
   and the same exemplars (``moe_agents.evaluation.peer``). It reads the text only, so it gets a
   route for every expert that takes text-only queries and none for media-only experts (``omni``):
   their queries are misses for it, and no text query is lost to them.

Gates 2–4 and the router's gate are fitted on the experts' exemplars only (variant
``exemplars``) and, separately, on the exemplars plus the fit splits that
``routing_fit_set`` allows (variant ``exemplars+fit``). Nothing is fitted on the test set.

Every accuracy comes with a seeded 95 % percentile-bootstrap interval, overall and on text-only
queries (those without attachments). The full router is compared with the peer query by query
(discordant counts and an exact McNemar test). Calibration: expected calibration error of the MLP
gate's top-1 probability (renormalised over the experts that accept the query) and of the full
router's top-1 confidence (the chosen expert's ``permission``). Out-of-scope: see
``moe_agents.evaluation.oos``. Each text is encoded once (an in-memory memo in front of the encoder);
the speed section uses the bare encoder.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..experts.base import Expert
from ..routing.encoder import Encoder
from ..routing.gates import fit_gate
from ..routing.router import Router
from ..types import Query
from .data import LabelledQuery, routing_fit_set, routing_test_set
from .metrics import RoutingScores, latency_summary, score_routing
from .oos import confidence, evaluate_out_of_scope, route_all
from .peer import PEER, SemanticRouterPeer
from .stats import bootstrap_ci, calibration, mcnemar, paired_bootstrap_ci

__all__ = ["CONTENDERS", "ROUTERS", "evaluate_routing"]

ROUTERS = ("keyword", "centroid", "knn", "mlp", "router", "router-cv")
CONTENDERS = (*ROUTERS, PEER)
"""Every router of the report, the peer last."""

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
    peer: bool = True,
    resamples: int = 2000,
    bins: int = 15,
    out_of_scope: bool = True,
    fallback_expert: str | None = None,
    oos_max_lost: float = 0.03,
    cv_folds: int = 5,
    oos_limit: int | None = None,
    cross_validated: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Runs the benchmark and returns a JSON-ready report.

    Args:
        experts: the pipeline's experts (their exemplars and ``can_handle`` are what is measured).
        router: the pipeline's router (its encoder, settings and extra exemplars are used).
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        per_label: cap per label of the test set.
        fit_per_label: cap per label of the fit-split exemplars of the ``exemplars+fit`` variant.
        seed: seed of the test-set sample, the bootstrap and the cross-validation folds.
        latency_queries: single queries timed one after another.
        concurrent_queries: queries routed together for the throughput measurement.
        peer: also route with semantic-router (needs ``moe-agents[eval]``).
        resamples: bootstrap resamples per interval.
        bins: equal-width bins of the expected calibration error.
        out_of_scope: also choose and measure the fallback threshold on CLINC out-of-scope queries.
        fallback_expert: the expert out-of-scope queries fall back to (default: the router's
            ``fallback_expert``, else ``knowledge`` if there is one, else the first expert).
        oos_max_lost: most share of in-scope fit queries the threshold may send to the fallback.
        cv_folds: cross-validation folds over the exemplars (in-scope fit confidences).
        oos_limit: route a seeded sample of this many CLINC ``oos_test`` queries; all by default.
        cross_validated: also run the full router with ``gate_weight: null``, whose gate kind, gate
            weight and temperature are chosen by cross-validation on the exemplars (contender
            ``router-cv``; about a minute of CPU per variant).
        progress: receives a short line as each step starts.

    Returns:
        ``{"set": ..., "variants": {variant: {router: scores}}, "paired": ..., "calibration": ...,
        "out_of_scope": ..., "speed": ..., ...}``; the ``RoutingScores`` objects are under
        ``"scores"`` and the reliability bins under ``"calibration"`` for plotting.

    Raises:
        ConfigError: ``peer`` is set and semantic-router is not installed, or the data is missing.
    """
    say = progress or (lambda _: None)
    say("building the labelled test set")
    items = routing_test_set(data_dir, per_label=per_label, seed=seed)
    names = [e.name for e in experts]
    labels = [n for n in names if n in {i.label for i in items}]
    truth = [i.label for i in items]
    queries = [i.query() for i in items]
    text_only = np.array([not q.attachments for q in queries])  # (N,)
    memo = _MemoEncoder(router.encoder)

    say(f"embedding {len(items)} test queries")
    vectors = await anyio.to_thread.run_sync(memo.encode, [q.text for q in queries])
    allowed = np.array([[e.accepts(q) for e in experts] for q in queries])  # (N, E)

    say("keyword self-assessment")
    keyword = await _keyword_predictions(experts, queries, allowed)

    fit_items = routing_fit_set(data_dir, per_label=fit_per_label, seed=seed)
    media_only = {e.name for e in experts if e.media_only}  # the peer gets no route for these
    preds: dict[str, dict[str, list[str | None]]] = {}
    confidences: dict[str, dict[str, np.ndarray]] = {}
    reports: dict[str, dict[str, Any]] = {}
    exemplar_router: Router | None = None
    for variant, fit_extra in (("exemplars", []), ("exemplars+fit", fit_items)):
        extra = {name: list(texts) for name, texts in router.extra_exemplars.items()}
        for item in fit_extra:
            extra.setdefault(item.label, []).append(item.text)
        full = Router(replace(router.config, top_k=1), encoder=memo, rules=router.rules, exemplars=extra)
        exemplars = full.exemplars(experts)
        say(f"[{variant}] embedding {sum(map(len, exemplars.values()))} exemplars")
        ex_texts = [t for ts in exemplars.values() for t in ts]
        ex_labels = [n for n, ts in exemplars.items() for _ in ts]
        ex_vectors = await anyio.to_thread.run_sync(memo.encode, ex_texts)
        pred: dict[str, list[str | None]] = {"keyword": list(keyword)}
        for kind in ("centroid", "knn", "mlp"):
            say(f"[{variant}] fitting the {kind} gate")
            cfg = replace(router.config.gate, kind=kind)
            gate, report = await anyio.to_thread.run_sync(
                functools.partial(fit_gate, ex_vectors, ex_labels, list(exemplars), cfg)
            )
            reports.setdefault(variant, {})[kind] = report.to_dict()
            probs = _columns(gate.predict_proba(vectors), gate.experts, names)  # (N, E)
            pred[kind] = list(_argmax(probs, allowed, names))
            if kind == "mlp":
                confidences.setdefault(variant, {})["mlp"] = _top1(probs, allowed)
        say(f"[{variant}] full router on {len(queries)} queries")
        await full.prepare(experts)
        selections = await route_all(full, queries, experts)
        pred["router"] = [s.experts[0] for s in selections]
        confidences[variant]["router"] = np.array([confidence(s) for s in selections])
        if cross_validated:
            say(f"[{variant}] full router, settings cross-validated on the exemplars")
            cv = Router(
                replace(router.config, top_k=1, gate_weight=None),
                encoder=memo,
                rules=router.rules,
                exemplars=extra,
            )
            await cv.prepare(experts)
            assert cv.report is not None
            reports.setdefault(variant, {})["router-cv"] = cv.report.to_dict()
            cv_selections = await route_all(cv, queries, experts)
            pred["router-cv"] = [s.experts[0] for s in cv_selections]
            confidences[variant]["router-cv"] = np.array([confidence(s) for s in cv_selections])
        if peer:
            say(f"[{variant}] semantic-router on {len(queries)} queries")
            text_routes = {n: ts for n, ts in exemplars.items() if n not in media_only}
            contender = SemanticRouterPeer(memo, text_routes)
            routed = await anyio.to_thread.run_sync(contender.route, [q.text for q in queries])
            pred[PEER] = [name for name, _ in routed]
        preds[variant] = pred
        if variant == "exemplars":
            exemplar_router = full

    say("confidence intervals, paired tests, calibration")
    stats = _statistics(
        truth, labels, text_only, preds, confidences, resamples=resamples, bins=bins, seed=seed
    )
    oos: dict[str, Any] | None = None
    if out_of_scope and exemplar_router is not None:
        fallback = fallback_expert or router.config.fallback_expert
        fallback = fallback or ("knowledge" if "knowledge" in names else names[0])
        oos = await evaluate_out_of_scope(
            exemplar_router,
            experts,
            fit_items=fit_items,
            test_queries=queries,
            test_confidence=confidences["exemplars"]["router"],
            data_dir=data_dir,
            fallback=fallback,
            max_lost=oos_max_lost,
            folds=cv_folds,
            seed=seed,
            oos_limit=oos_limit,
            progress=say,
        )

    say("timing single queries and concurrent routing")
    speed = await _speed(router, experts, queries, latency_queries, concurrent_queries)
    return {
        "set": {
            "n": len(items),
            "text_only": int(text_only.sum()),
            "per_label": {lab: truth.count(lab) for lab in labels},
            "sources": _count_sources(items),
            "per_label_cap": per_label,
            "seed": seed,
        },
        "fit_set": {lab: sum(1 for i in fit_items if i.label == lab) for lab in labels},
        "variants": stats["variants"],
        "paired": stats["paired"],
        "calibration": stats["calibration"],
        "out_of_scope": oos,
        "bootstrap": {"resamples": resamples, "level": 0.95, "seed": seed},
        "gates": reports,
        "speed": speed,
        "encoder": router.encoder.name,
        "peer_version": _version("semantic-router") if peer else None,
        "encoded_texts": memo.encoded,
        "scores": stats["scores"],
    }


class _MemoEncoder:
    """The encoder with every embedding kept: a text is encoded once per benchmark run."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.name = inner.name
        self.encoded = 0
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            for text, vector in zip(missing, self.inner.encode(missing), strict=True):
                self._memo[text] = vector
            self.encoded += len(missing)
        if not texts:
            return self.inner.encode([])
        return np.stack([self._memo[t] for t in texts])


def _statistics(
    truth: Sequence[str],
    labels: Sequence[str],
    text_only: np.ndarray,
    preds: Mapping[str, Mapping[str, Sequence[str | None]]],
    confidences: Mapping[str, Mapping[str, np.ndarray]],
    *,
    resamples: int,
    bins: int,
    seed: int,
) -> dict[str, Any]:
    """Scores with intervals (overall and text-only), the router-vs-peer paired test, calibration."""
    truth_arr = np.array(truth)
    text_labels = [lab for lab in labels if lab in set(truth_arr[text_only])]
    variants: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[str, RoutingScores]] = {}
    paired: dict[str, Any] = {}
    calib: dict[str, Any] = {}
    for variant, pred in preds.items():
        correct: dict[str, np.ndarray] = {}
        for name, routed in pred.items():
            given = [p if p is not None else "none" for p in routed]
            s = score_routing(truth, given, labels)
            hit = np.array([p == t for p, t in zip(given, truth, strict=True)])
            correct[name] = hit
            text_scores = score_routing(
                list(truth_arr[text_only]), list(np.array(given)[text_only]), text_labels
            )
            scores.setdefault(variant, {})[name] = s
            variants.setdefault(variant, {})[name] = {
                **_scores_json(s),
                "ci95": bootstrap_ci(hit, resamples=resamples, seed=seed),
                "text_only": {
                    "accuracy": text_scores.accuracy,
                    "ci95": bootstrap_ci(hit[text_only], resamples=resamples, seed=seed),
                    "n": text_scores.n,
                    "macro_f1": text_scores.macro_f1,
                    "per_label_accuracy": dict(text_scores.per_label_accuracy),
                },
            }
        for mine in ("router", "router-cv"):
            if PEER in correct and mine in correct:
                paired[variant if mine == "router" else f"{variant}, {mine}"] = {
                    "router": mine,
                    "peer": PEER,
                    "overall": _paired(correct[mine], correct[PEER], resamples, seed),
                    "text_only": _paired(correct[mine][text_only], correct[PEER][text_only], resamples, seed),
                }
        calib[variant] = {
            name: calibration(conf, correct[name], bins=bins).to_dict()
            for name, conf in confidences[variant].items()
        }
    return {"variants": variants, "scores": scores, "paired": paired, "calibration": calib}


def _paired(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """Discordant counts, exact McNemar p-value and the accuracy difference with its interval."""
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return {
        "n": int(a.size),
        "b_router_only": only_a,
        "c_peer_only": only_b,
        "mcnemar_p": mcnemar(only_a, only_b),
        "difference": float(a.mean() - b.mean()),
        "difference_ci95": paired_bootstrap_ci(a, b, resamples=resamples, seed=seed),
    }


def _top1(probs: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Top-1 gate probability over the experts that accept each query, renormalised as the router
    does (uniform when the gate gives them no mass)."""
    masked = np.where(allowed, probs, 0.0)  # (N, E)
    total = masked.sum(axis=1)
    uniform = 1.0 / np.maximum(allowed.sum(axis=1), 1)
    return np.where(total > 0, masked.max(axis=1) / np.where(total > 0, total, 1.0), uniform)


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
