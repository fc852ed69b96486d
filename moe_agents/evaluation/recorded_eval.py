"""``moe-agents eval recorded``: trust-based selection measured on recorded answers of real LLMs.

Four experiments, each beside its baselines in the same run:

1. **Cost/quality routing** (MMLU: Mixtral vs GPT-4, 5 subject-disjoint folds; GSM8K: the same
   pair, 5 random folds). Trust per (model, context) is learned from the recorded correctness of
   the training folds (context: k-means cluster of the question embedding, fitted on the training
   folds' questions) and the permission function ranks ``trust × 1/(1 + w·price)``; sweeping the
   cost weight ``w`` traces accuracy against the share of GPT-4 calls. Baselines: random mixing,
   each single model, the oracle, and the router without trust. Beside them, the ``success``
   router: per-model logistic heads over the question embedding (``SuccessModel``), fitted on the
   same training folds, whose probabilities are the expertise the same permission function ranks
   (RouteLLM's kind of learned router).
2. **Online trust**: the questions stream once in a seeded random order; the selector sees only
   the trust it has learned so far (feedback = the recorded correctness of the model it chose;
   contexts are online k-means clusters seeded by the first questions). Baselines: random router,
   best single model in hindsight, oracle; regret; and the seed's null-model control (how many
   distinct experts each policy used and how "diverse" its usage was).
3. **Aggregation** on GSM8K with all 6 models: majority voting on extracted final numbers,
   trust-weighted voting (trust learned on training folds; the weight sharpness is chosen on the
   training folds too), ``weighted`` selection; every method graded by the same extraction
   against the reference answer.
4. **Residency**: a synthetic trace of queries over local models of different sizes under a
   memory budget (``moe_agents.evaluation.residency_trace``).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ..aggregators import VotingAggregator, WeightedAggregator
from ..aggregators.base import Aggregation
from ..answers import extract_number
from ..recorded import PRICES, RecordedSet, load_gsm8k_recorded, load_mmlu
from ..resources import cache_folder
from ..routing.context import ContextConfig, KMeansContexts
from ..routing.encoder import Encoder
from ..routing.permission import Candidates, SelectConfig, permission, select
from ..routing.quality import SuccessModel
from ..routing.trust import TrustStore
from ..types import Answer, Query, Selection
from .metrics import cost_frontier
from .recorded_plots import plot_recorded
from .residency_trace import residency_trace

__all__ = ["RecordedEvalConfig", "evaluate_recorded", "plot_recorded"]

Progress = Callable[[str], None]
STRONG, WEAK = "gpt-4-1106", "mixtral-8x7b"


@dataclass(frozen=True, slots=True)
class RecordedEvalConfig:
    """Settings of ``evaluate_recorded``.

    Attributes:
        data_dir: the evaluation data folder (default: ``$MOE_AGENTS_EVAL_DATA``).
        folds: cross-validation folds (MMLU: subject-disjoint).
        clusters: k-means contexts for trust.
        cost_weights: the sweep of the cost weight ``w`` (0 = quality only).
        epsilons: exploration rates of the online experiment.
        l2_grid: ridge penalties tried for the success router (chosen per fold by an inner
            cross-validation on its training folds).
        sharpness: exponents ``γ`` tried for trust-weighted voting (weights ∝ trust^γ); the one that
            is best on each training fold is used on its test fold.
        seed: every random choice (folds, stream order, exploration).
        limit: keep only this many questions per MMLU subject and of GSM8K (quick runs).
        residency_queries: length of the residency trace.
    """

    data_dir: Path | None = None
    folds: int = 5
    clusters: int = 32
    cost_weights: tuple[float, ...] = (0.0, *np.geomspace(1.0, 1e5, 61).tolist())
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1)
    sharpness: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    seed: int = 0
    limit: int | None = None
    residency_queries: int = 5000


def evaluate_recorded(
    config: RecordedEvalConfig, encoder: Encoder, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Runs the four experiments and returns a JSON-ready report."""
    say = progress or (lambda _: None)
    say("loading recorded answers")
    sets = {
        "mmlu": load_mmlu(config.data_dir, limit_per_subject=config.limit),
        "gsm8k": load_gsm8k_recorded(config.data_dir, limit=config.limit),
    }
    report: dict[str, Any] = {
        "config": {
            "folds": config.folds,
            "clusters": config.clusters,
            "seed": config.seed,
            "limit": config.limit,
            "encoder": encoder.name,
        },
        "prices_usd_per_call": dict(PRICES),
        "datasets": {n: {"questions": len(d), "accuracy": d.accuracy()} for n, d in sets.items()},
        "cost_quality": {},
        "online": {},
    }
    for name, data in sets.items():
        say(f"{name}: embedding {len(data)} questions")
        vectors = _embed(encoder, data.questions)
        say(f"{name}: cost/quality sweep")
        report["cost_quality"][name] = cost_quality(data, vectors, config)
        say(f"{name}: online trust")
        report["online"][name] = online_trust(data, vectors, config)
    say("gsm8k: aggregation")
    report["aggregation"] = aggregation(sets["gsm8k"], config)
    say("residency trace")
    report["residency"] = residency_trace(seed=config.seed, n_queries=config.residency_queries)
    return report


# -- 1. cost/quality ---------------------------------------------------------------------------------


def cost_quality(data: RecordedSet, vectors: np.ndarray, config: RecordedEvalConfig) -> dict[str, Any]:
    """Accuracy against the share of GPT-4 calls, for the trust router and its baselines."""
    models = [STRONG, WEAK]
    cols = [data.models.index(m) for m in models]
    correct = data.correct[:, cols]  # (N, 2)
    price = np.array([PRICES[m] for m in models])
    n = len(data)
    folds = data.folds(config.folds, seed=config.seed)
    chosen = np.zeros((len(config.cost_weights), n), dtype=np.intp)  # per weight, per question
    untrusted = np.zeros((len(config.cost_weights), n), dtype=np.intp)
    learned = np.zeros((len(config.cost_weights), n), dtype=np.intp)
    chosen_l2: list[float] = []
    uniform = np.ones(len(models))
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        l2 = _choose_l2(data.subset(train), vectors[train], correct[train], config)
        chosen_l2.append(l2)
        success = SuccessModel.fit(vectors[train], correct[train], models, l2=l2).predict_proba(vectors[test])
        for w_i, w in enumerate(config.cost_weights):  # the same permission(), over (T, 2) at once
            _, _, perm = permission(success, price[None, :] * w, np.zeros(success.shape, bool), 0.0)
            learned[w_i, test] = np.argmax(perm, axis=1)
        contexts = KMeansContexts.fit(
            vectors[train], ContextConfig(kind="cluster", clusters=config.clusters, seed=config.seed)
        )
        with TrustStore(":memory:", decay=1.0) as store:
            train_ctx = contexts.assign_many(vectors[train])
            store.record_many(
                (m, ctx, float(correct[i, j]))
                for i, ctx in zip(train, train_ctx, strict=True)
                for j, m in enumerate(models)
            )
            test_ctx = np.array(contexts.assign_many(vectors[test]))
            for ctx in np.unique(test_ctx):
                trust, evidence = store.lookup(models, str(ctx), backoff=SelectConfig().min_evidence)
                rows = test[test_ctx == ctx]
                for w_i, w in enumerate(config.cost_weights):
                    cfg = SelectConfig(cost_weight=w, low_trust_threshold=0.0)
                    pick = select(
                        Candidates(models, uniform, trust=trust, evidence=evidence, price=price), cfg
                    )
                    chosen[w_i, rows] = models.index(pick.experts[0])
                    plain = select(Candidates(models, uniform, price=price), cfg)
                    untrusted[w_i, rows] = models.index(plain.experts[0])

    def curve(picks: np.ndarray) -> list[dict[str, float]]:
        points = []
        for w, p in zip(config.cost_weights, picks, strict=True):
            acc = float(correct[np.arange(n), p].mean())
            share = float((p == 0).mean())
            points.append(
                {
                    "cost_weight": float(w),
                    "strong_share": share,
                    "accuracy": acc,
                    "usd_per_1k": float(price[p].sum() / n * 1000),
                }
            )
        return points

    strong_acc, weak_acc = float(correct[:, 0].mean()), float(correct[:, 1].mean())
    trust_curve, plain_curve, learned_curve = curve(chosen), curve(untrusted), curve(learned)
    only_strong_right = float((correct[:, 0] & ~correct[:, 1]).mean())
    rng = np.random.default_rng(config.seed)
    random_points = []
    for share in (0.25, 0.5, 0.75):
        p = (rng.random(n) >= share).astype(np.intp)  # 0 = strong with probability `share`
        random_points.append(
            {"strong_share": float((p == 0).mean()), "accuracy": float(correct[np.arange(n), p].mean())}
        )
    oracle_acc = float(correct.any(axis=1).mean())
    result: dict[str, Any] = {
        "models": models,
        "folds": "subject-disjoint" if data.name == "mmlu" else "random",
        "strong_accuracy": strong_acc,
        "weak_accuracy": weak_acc,
        "oracle": {"accuracy": oracle_acc, "strong_share": only_strong_right},
        "random_mixing": random_points,
        "trust_router": trust_curve,
        "router_without_trust": plain_curve,
        "success_router": learned_curve,
        "success_router_l2_per_fold": chosen_l2,
        "apgr": {
            "trust_router": _apgr(trust_curve, strong_acc, weak_acc),
            "success_router": _apgr(learned_curve, strong_acc, weak_acc),
            "router_without_trust": _apgr(plain_curve, strong_acc, weak_acc),
            "random_mixing": 0.5,
            "oracle": _apgr(
                [{"strong_share": only_strong_right, "accuracy": oracle_acc}], strong_acc, weak_acc
            ),
        },
        "strong_share_needed": {},
    }
    for target in (0.8, 0.95):
        goal = target * strong_acc
        result["strong_share_needed"][f"{int(target * 100)}%"] = {
            "accuracy_goal": goal,
            "trust_router": _share_for(trust_curve, goal, strong_acc, weak_acc),
            "success_router": _share_for(learned_curve, goal, strong_acc, weak_acc),
            "router_without_trust": _share_for(plain_curve, goal, strong_acc, weak_acc),
            "random_mixing": float(np.clip((goal - weak_acc) / (strong_acc - weak_acc), 0.0, 1.0)),
            "oracle": 0.0 if goal <= weak_acc else float(min(only_strong_right, (goal - weak_acc))),
        }
    return result


def _choose_l2(
    data: RecordedSet, vectors: np.ndarray, correct: np.ndarray, config: RecordedEvalConfig
) -> float:
    """The ridge penalty of the success model with the best APGR in an inner cross-validation on
    the training folds alone (subject-disjoint for MMLU)."""
    scores = {}
    inner = data.folds(3, seed=config.seed)
    for l2 in config.l2_grid:
        gap = np.zeros(len(data))
        for test in inner:
            train = np.setdiff1d(np.arange(len(data)), test)
            p = SuccessModel.fit(vectors[train], correct[train], ["strong", "weak"], l2=l2).predict_proba(
                vectors[test]
            )
            gap[test] = p[:, 0] - p[:, 1]
        scores[l2] = _ranking_apgr(gap, correct)
    return max(config.l2_grid, key=lambda l2: (scores[l2] if scores[l2] is not None else 0.0, l2))


def _ranking_apgr(gap: np.ndarray, correct: np.ndarray, steps: int = 40) -> float | None:
    """APGR of sending the queries with the largest ``gap`` to the strong model (column 0)."""
    n = len(gap)
    order = np.argsort(-gap, kind="stable")
    points = []
    for share in np.linspace(0.0, 1.0, steps + 1):
        pick = np.ones(n, dtype=np.intp)
        pick[order[: round(share * n)]] = 0
        points.append({"strong_share": float(share), "accuracy": float(correct[np.arange(n), pick].mean())})
    return _apgr(points, float(correct[:, 0].mean()), float(correct[:, 1].mean()))


def _apgr(points: Sequence[Mapping[str, float]], strong: float, weak: float) -> float | None:
    """Average performance gap recovered (RouteLLM): the area under (accuracy − weak)/(strong − weak)
    over the share of strong calls, between straight lines joining the measured points (``None``
    when the two models are equally accurate: there is no gap)."""
    if strong == weak:
        return None
    pts = cost_frontier(points, strong, weak)
    x = np.array([p[0] for p in pts])
    y = (np.array([p[1] for p in pts]) - weak) / (strong - weak)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def _share_for(
    points: Sequence[Mapping[str, float]], goal: float, strong: float, weak: float
) -> float | None:
    """The least share of strong calls at which the curve (linear between points) reaches ``goal``."""
    pts = cost_frontier(points, strong, weak)
    if pts[0][1] >= goal:
        return 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if y1 >= goal:
            return float(x0 + (goal - y0) / (y1 - y0) * (x1 - x0)) if y1 > y0 else float(x1)
    return None


# -- 2. online trust -----------------------------------------------------------------------------------


def online_trust(data: RecordedSet, vectors: np.ndarray, config: RecordedEvalConfig) -> dict[str, Any]:
    """Streams the questions once; trust learns per context from the recorded correctness."""
    models = list(data.models)
    m = len(models)
    price = np.array([PRICES[x] for x in models])
    n = len(data)
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    correct = data.correct[order]
    stream = vectors[order]
    checkpoints = np.unique(np.linspace(1, n, min(n, 200)).astype(int))
    policies: dict[str, np.ndarray] = {}
    modes: dict[str, dict[str, int]] = {}
    for eps in config.epsilons:
        picks, used_modes = _run_online(stream, correct, models, price, eps, config)
        policies[f"trust (eps={eps:g})"] = picks
        modes[f"trust (eps={eps:g})"] = used_modes
    policies["random"] = rng.integers(0, m, n)
    best = int(np.argmax(correct.mean(axis=0)))
    policies[f"best single ({models[best]})"] = np.full(n, best)
    by_price = np.argsort(price, kind="stable")
    right = correct[:, by_price]
    policies["oracle"] = by_price[np.where(right.any(axis=1), np.argmax(right, axis=1), 0)]

    best_hits = correct[:, best].astype(np.float64)
    oracle_hits = correct.any(axis=1).astype(np.float64)
    out: dict[str, Any] = {"models": models, "questions": n, "stream_seed": config.seed, "policies": {}}
    for name, picks in policies.items():
        hits = correct[np.arange(n), picks].astype(np.float64)
        usage = np.bincount(picks, minlength=m) / n
        nz = usage[usage > 0]
        out["policies"][name] = {
            "accuracy": float(hits.mean()),
            "usd_per_1k": float(price[picks].sum() / n * 1000),
            "regret_vs_best_single": float((best_hits - hits).sum()),
            "regret_vs_oracle": float((oracle_hits - hits).sum()),
            "distinct_experts": int((usage > 0).sum()),
            "usage_entropy": float(-(nz * np.log(nz)).sum() / np.log(m)),
            "usage": {models[i]: float(usage[i]) for i in range(m)},
            "modes": modes.get(name, {}),
            "cumulative_accuracy": (np.cumsum(hits)[checkpoints - 1] / checkpoints).tolist(),
            "cumulative_usd": np.cumsum(price[picks])[checkpoints - 1].tolist(),
        }
    out["checkpoints"] = checkpoints.tolist()
    return out


def _run_online(
    stream: np.ndarray,
    correct: np.ndarray,
    models: list[str],
    price: np.ndarray,
    epsilon: float,
    config: RecordedEvalConfig,
) -> tuple[np.ndarray, dict[str, int]]:
    n = len(stream)
    contexts = KMeansContexts(stream[: min(config.clusters, n)], online=True)
    cfg = SelectConfig(epsilon=epsilon)  # the product defaults: cost weight 1 per USD
    rng = np.random.default_rng(config.seed + 1)
    picks = np.empty(n, dtype=np.intp)
    modes: dict[str, int] = {}
    uniform = np.ones(len(models))
    with TrustStore(":memory:") as store:
        for t in range(n):
            ctx = contexts.assign(stream[t])
            trust, evidence = store.lookup(models, ctx, backoff=cfg.min_evidence)
            sel = select(
                Candidates(
                    models,
                    uniform,
                    trust=trust,
                    evidence=evidence,
                    price=price,
                    profiles=lambda: store.profiles(models)[0],
                ),
                cfg,
                rng=rng,
                context=ctx,
            )
            j = models.index(sel.experts[0])
            picks[t] = j
            modes[sel.mode] = modes.get(sel.mode, 0) + 1
            store.record(models[j], ctx, float(correct[t, j]), source="recorded")
    return picks, modes


# -- 3. aggregation --------------------------------------------------------------------------------------


def aggregation(data: RecordedSet, config: RecordedEvalConfig) -> dict[str, Any]:
    """Voting and selection over all 6 GSM8K models, graded by one extraction against the reference."""
    assert data.responses is not None and data.reference is not None
    models = list(data.models)
    n = len(data)
    numbers = [[extract_number(text) for text in row] for row in data.responses]
    reference = list(data.reference)
    graded = np.array([[numbers[i][j] == reference[i] for j in range(len(models))] for i in range(n)])
    folds = data.folds(config.folds, seed=config.seed)
    majority = VotingAggregator(key="number")
    weighted_vote = VotingAggregator(key="number", weighted=True)
    pick_best = WeightedAggregator()
    hits: dict[str, np.ndarray] = {k: np.zeros(n, bool) for k in ("majority", "trust_voting", "weighted")}
    chosen_gamma: list[float] = []

    async def grade(agg: Any, i: int, selection: Selection) -> bool:
        answers = {m: Answer(m, data.responses[i][j], confidence=1.0, model=m) for j, m in enumerate(models)}  # type: ignore[index]
        job = Aggregation(Query(data.questions[i]), selection, answers, _no_ask)
        answer = await agg.aggregate(job)
        return extract_number(answer.text) == reference[i]

    async def run_all() -> None:
        uniform = Selection.from_scores([(m, 1.0) for m in models], mode="router", scores={})
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            with TrustStore(":memory:", decay=1.0) as store:
                store.record_many(
                    (m, "global", float(data.correct[i, j])) for i in train for j, m in enumerate(models)
                )
                trust, evidence = store.lookup(models, "global")
            selections = {
                g: select(
                    Candidates(models, np.ones(len(models)), trust=trust**g, evidence=evidence),
                    SelectConfig(low_trust_threshold=0.0),
                    k=len(models),
                )
                for g in config.sharpness
            }
            train_acc = {}
            for g, sel in selections.items():  # the sharpness is chosen on the training fold
                train_acc[g] = np.mean([await grade(weighted_vote, int(i), sel) for i in train])
            gamma = max(config.sharpness, key=lambda g: (train_acc[g], -g))
            chosen_gamma.append(float(gamma))
            for i in test:
                hits["majority"][i] = await grade(majority, int(i), uniform)
                hits["trust_voting"][i] = await grade(weighted_vote, int(i), selections[gamma])
                hits["weighted"][i] = await grade(pick_best, int(i), selections[gamma])

    anyio.run(run_all)
    recorded = data.accuracy()
    best = max(recorded, key=recorded.__getitem__)
    return {
        "models": models,
        "grader": "extract_number(answer) == reference",
        "methods": {k: float(v.mean()) for k, v in hits.items()},
        "sharpness_chosen_per_fold": chosen_gamma,
        "single_models_same_grader": {m: float(graded[:, j].mean()) for j, m in enumerate(models)},
        "single_models_recorded": recorded,
        "best_single": {
            "model": best,
            "recorded": recorded[best],
            "same_grader": float(graded[:, models.index(best)].mean()),
        },
        "oracle_same_grader": float(graded.any(axis=1).mean()),
        "oracle_recorded": float(data.correct.any(axis=1).mean()),
    }


async def _no_ask(name: str, query: Query, on_chunk: Any) -> Answer:  # pragma: no cover - never asked
    raise RuntimeError("the recorded evaluation asks no expert")


def _embed(encoder: Encoder, texts: Sequence[str], batch: int = 512) -> np.ndarray:
    """Embeddings of ``texts``, cached on disk by the encoder's name and the texts (re-runs of the
    benchmark skip the minutes MMLU takes to encode)."""
    folder = embedding_cache_dir()
    digest = hashlib.sha256("\x00".join([encoder.name, *texts]).encode()).hexdigest()[:24]
    path = folder / f"{digest}.npy" if folder is not None else None
    if path is not None and path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return cached
    vectors = np.concatenate(
        [encoder.encode(list(texts[i : i + batch])) for i in range(0, len(texts), batch)]
    )
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, vectors)
        except OSError:
            pass  # a cache that cannot be written is no cache
    return vectors


def embedding_cache_dir() -> Path | None:
    """``$MOE_AGENTS_CACHE_DIR/embeddings`` or the user cache folder's (``None`` if neither works)."""
    return cache_folder("embeddings")


# -- plots --------------------------------------------------------------------------------------------------
