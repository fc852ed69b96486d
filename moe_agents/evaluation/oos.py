"""Out-of-scope queries and the fallback expert: the full router's ``min_confidence`` chosen on fit
data, then measured on test data.

A query falls back when the full router's top-1 confidence (the chosen expert's ``permission``,
the number ``min_confidence`` is compared with) is below the threshold; the router then picks
``fallback_expert`` and says ``Selection.mode == "fallback"``.

The operating point is chosen on fit data only: CLINC's out-of-scope fit splits (``oos_train``,
``oos_val``) against in-scope fit queries, which are the fit-split set (GSM8K train, CLINC train
small talk; not used by the ``exemplars`` gate) and every exemplar routed by a router whose gate was
fitted on the other folds (k-fold cross-validation, so an exemplar never scores its own gate). It is
measured on CLINC ``oos_test`` and on the labelled routing test set, by routing both through a router
with that ``min_confidence`` and ``fallback_expert`` and counting ``mode == "fallback"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..experts.base import Expert
from ..routing.gates import fit_gate
from ..routing.router import Router
from ..types import Query, Selection
from .data import OOS_FIT_SPLITS, LabelledQuery, clinc_out_of_scope, placeholder_image
from .stats import choose_threshold, tradeoff

__all__ = ["confidence", "cv_confidences", "evaluate_out_of_scope", "route_all"]

Progress = Callable[[str], None]


def confidence(selection: Selection) -> float:
    """The top-1 confidence of a selection: the chosen expert's ``permission`` (``expertise`` ×
    cheapness × persistence × availability; the value ``min_confidence`` is compared with).
    ``Selection.weights`` cannot serve: they are normalised, so a top-1 weight is always 1."""
    return float(selection.scores[selection.experts[0]].permission)


async def route_all(router: Router, queries: Sequence[Query], experts: Sequence[Expert]) -> list[Selection]:
    """Routes ``queries`` 256 at a time (concurrently, so they share encoder forwards)."""
    out: list[Selection | None] = [None] * len(queries)

    async def one(i: int) -> None:
        out[i] = await router.route(queries[i], experts)

    for start in range(0, len(queries), 256):
        async with anyio.create_task_group() as tg:
            for i in range(start, min(start + 256, len(queries))):
                tg.start_soon(one, i)
    return [s for s in out if s is not None]


def _exemplar_query(text: str, expert: Expert) -> Query:
    """An exemplar as a query; an expert that takes only images gets it with a placeholder image."""
    query = Query(text)
    return query if expert.accepts(query) else Query(text, attachments=(placeholder_image(text),))


async def cv_confidences(
    router: Router, experts: Sequence[Expert], *, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The full router's top-1 confidence and correctness on every exemplar, each routed by a
    router whose gate was fitted on the other folds (folds stratified per expert, seeded).

    A fold's router keeps what ``router`` settled on all exemplars (the encoder it embeds queries
    with, its gate weight, its gate settings) and refits only the gate: refitting a tuned encoder
    per fold would take minutes each. Where the encoder was tuned on the exemplars, the held-out
    ones are therefore not fully unseen, and their confidences lean high.

    Args:
        router: the full router, prepared (its gate fitted).
        experts: the experts.
        folds: cross-validation folds.
        seed: seeds the folds.

    Returns:
        ``(confidence, correct)``, one entry per exemplar.
    """
    exemplars = router.exemplars(experts)
    by_name = {e.name: e for e in experts}
    texts = [t for ts in exemplars.values() for t in ts]
    labels = [n for n, ts in exemplars.items() for _ in ts]
    encoder = getattr(router, "active_encoder", router.encoder)
    config = replace(
        router.config, top_k=1, gate_weight=getattr(router, "gate_weight", router.config.gate_weight)
    )
    vectors = await anyio.to_thread.run_sync(encoder.encode, texts)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(texts), dtype=np.int64)
    for name in exemplars:
        rows = np.flatnonzero(np.array(labels) == name)
        fold[rng.permutation(rows)] = np.arange(rows.size) % folds
    conf, correct = np.empty(len(texts)), np.empty(len(texts), dtype=bool)
    for f in range(folds):
        train, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        gate, _ = await anyio.to_thread.run_sync(
            functools.partial(
                fit_gate, vectors[train], [labels[i] for i in train], list(exemplars), config.gate
            )
        )
        cv = Router(config, encoder=encoder, rules=router.rules, gate=gate)
        queries = [_exemplar_query(texts[i], by_name[labels[i]]) for i in held]
        for i, sel in zip(held, await route_all(cv, queries, experts), strict=True):
            conf[i], correct[i] = confidence(sel), sel.experts[0] == labels[i]
    return conf, correct


async def evaluate_out_of_scope(
    router: Router,
    experts: Sequence[Expert],
    *,
    fit_items: Sequence[LabelledQuery],
    test_queries: Sequence[Query],
    test_confidence: np.ndarray,
    data_dir: str | Path | None,
    fallback: str,
    max_lost: float = 0.03,
    folds: int = 5,
    seed: int = 0,
    oos_limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Chooses ``min_confidence`` on fit data and measures the fallback on test data.

    Args:
        router: the full router (top-1, prepared), fitted on exemplars only.
        experts: the experts.
        fit_items: in-scope fit-split queries (not used to fit ``router``'s gate).
        test_queries: the in-scope test queries.
        test_confidence: ``router``'s top-1 confidence on each test query (for the curve).
        data_dir: the evaluation data folder (CLINC out-of-scope splits).
        fallback: the expert queries fall back to.
        max_lost: most share of in-scope fit queries the threshold may send to the fallback.
        folds: cross-validation folds over the exemplars.
        seed: seeds the folds and the ``oos_limit`` sample.
        oos_limit: route a seeded sample of this many ``oos_test`` queries (quick runs); all by default.
        progress: receives a short line as each step starts.

    Returns:
        The threshold, the measured shares with counts, the fit-side shares, and both curves.
    """
    say = progress or (lambda _: None)
    say("[out-of-scope] routing CLINC oos fit queries and fit-split queries")
    oos_fit = clinc_out_of_scope(data_dir, splits=OOS_FIT_SPLITS)
    oos_test = clinc_out_of_scope(data_dir, splits=("oos_test",))
    if oos_limit is not None and oos_limit < len(oos_test):
        keep = np.random.default_rng(seed).choice(len(oos_test), size=oos_limit, replace=False)
        oos_test = [oos_test[i] for i in sorted(keep)]
    fit_sel = await route_all(router, [Query(t) for t in oos_fit], experts)
    oos_fit_conf = np.array([confidence(s) for s in fit_sel])
    split_sel = await route_all(router, [i.query() for i in fit_items], experts)
    say(f"[out-of-scope] {folds}-fold cross-validated confidences on the exemplars")
    cv_conf, cv_correct = await cv_confidences(router, experts, folds=folds, seed=seed)
    in_fit_conf = np.concatenate([cv_conf, [confidence(s) for s in split_sel]])
    threshold = choose_threshold(oos_fit_conf, in_fit_conf, max_lost=max_lost)

    say(f"[out-of-scope] routing {len(oos_test)} oos test queries at min_confidence {threshold:.3f}")
    oos_test_conf = np.array(
        [confidence(s) for s in await route_all(router, [Query(t) for t in oos_test], experts)]
    )
    guard = Router(
        replace(
            router.config,
            top_k=1,
            min_confidence=threshold,
            fallback_expert=fallback,
            gate_weight=getattr(router, "gate_weight", router.config.gate_weight),
        ),
        encoder=router.encoder,
        rules=router.rules,
        gate=router.gate,
    )
    oos_modes = [s.mode for s in await route_all(guard, [Query(t) for t in oos_test], experts)]
    in_modes = [s.mode for s in await route_all(guard, test_queries, experts)]
    caught, lost = oos_modes.count("fallback"), in_modes.count("fallback")

    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), [threshold]]))
    fit_caught, fit_lost = tradeoff(oos_fit_conf, in_fit_conf, grid)
    test_caught, test_lost = tradeoff(oos_test_conf, test_confidence, grid)
    at = int(np.searchsorted(grid, threshold))
    return {
        "threshold": threshold,
        "fallback_expert": fallback,
        "max_lost_fit": max_lost,
        "oos_to_fallback": caught / len(oos_modes),
        "inscope_lost": lost / len(in_modes),
        "oos_n": len(oos_modes),
        "oos_caught": caught,
        "inscope_n": len(in_modes),
        "inscope_lost_n": lost,
        "fit": {
            "oos_splits": list(OOS_FIT_SPLITS),
            "oos_n": int(oos_fit_conf.size),
            "inscope_n": int(in_fit_conf.size),
            "inscope_exemplars_cv": int(cv_conf.size),
            "inscope_fit_split": len(split_sel),
            "exemplar_cv_accuracy": float(cv_correct.mean()),
            "oos_to_fallback": float(fit_caught[at]),
            "inscope_lost": float(fit_lost[at]),
        },
        "curve": {
            "thresholds": grid.tolist(),
            "fit_oos_to_fallback": fit_caught.tolist(),
            "fit_inscope_lost": fit_lost.tolist(),
            "test_oos_to_fallback": test_caught.tolist(),
            "test_inscope_lost": test_lost.tolist(),
        },
        "oos_test_confidence_mean": float(oos_test_conf.mean()),
    }
