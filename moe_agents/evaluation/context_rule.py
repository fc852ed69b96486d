"""The context-rule benchmark: does a new query continue the previous turn (``moe_agents.continuity``)?

Each item is a pair of consecutive user turns, routed turn by turn in one session (with the
router's momentum, as in a pipeline) and labelled *continues* (a follow-up) or *new topic*. The
rule gives the previous turn when the new turn's expert answered it, or when the two turns'
embeddings (the router's encoder) have a cosine similarity of at least the threshold.

* **Fit set**: the 60 consecutive-turn pairs of the 20 hand-written conversations of
  ``moe_agents.evaluation.conversations`` (49 follow-ups, 11 topic switches). No fit split of the
  shared data has conversations (GSM8K train and CLINC are single queries), and hand-written data
  may be fitted on (data README). The threshold maximises balanced accuracy (the mean of the
  follow-ups' recall and the switches' specificity); among equally good cut points between two
  observed similarities, the middle one is taken. Leave-one-conversation-out cross-validation
  says how well that choice generalises within the set.
* **Measurement set**: MT-Bench (``routellm/mt_bench/question.jsonl``, a test split, never fitted
  on): its 80 human-written second turns after their first turn (continues), and for each
  conversation the first turn of ``negatives`` other conversations (seeded) after its first turn
  (new topic).

Reported on both, next to the baselines measured in the same run: every turn (the behaviour
before the rule), no turn, same expert only, similarity only (its own threshold, fitted the same
way), the rule, and on MT-Bench the threshold that would have been best there (an oracle, for
reference only).

Memories (``MemoryStore.recall``) use the same similarity floor against the stored exchange (user
turn and answer embedded together). That is measured on MT-Bench too, with GPT-4's recorded answer
to each first turn (``routellm/mt_bench/judgements.jsonl``): how often the exchange passes the floor
for its own follow-up, and how often it is kept out for the other conversations' first turns.
"""

from __future__ import annotations

import math
import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..experts.base import Expert
from ..jsonl import read_jsonl
from ..routing.router import Router
from ..types import Query
from .conversations import CONVERSATIONS

__all__ = [
    "Pair",
    "conversation_pairs",
    "evaluate_context_rule",
    "fit_threshold",
    "memory_floor",
    "mt_bench_pairs",
    "rates",
]

_MT_BENCH = "routellm/mt_bench/question.jsonl"
_MT_BENCH_JUDGEMENTS = "routellm/mt_bench/judgements.jsonl"
_ANSWER = re.compile(r"### Assistant A:\n(.*?)\n\n### User:", re.S)


@dataclass(frozen=True, slots=True)
class Pair:
    """Two consecutive user turns, as the rule sees them.

    Attributes:
        continues: the label: the second turn is a follow-up of the first.
        same_expert: the router chose the same (top) expert for both turns.
        similarity: cosine similarity of the two turns' embeddings.
        group: the conversation it comes from (for cross-validation).
    """

    continues: bool
    same_expert: bool
    similarity: float
    group: int


def _decide(pairs: Sequence[Pair], threshold: float, same_expert: bool) -> list[bool]:
    return [(same_expert and p.same_expert) or p.similarity >= threshold for p in pairs]


def _score(given: Sequence[bool], labels: Sequence[bool]) -> dict[str, float]:
    follow = [g for g, y in zip(given, labels, strict=True) if y]
    new = [not g for g, y in zip(given, labels, strict=True) if not y]
    recall = float(np.mean(follow)) if follow else float("nan")
    specificity = float(np.mean(new)) if new else float("nan")
    return {"recall": recall, "specificity": specificity, "balanced_accuracy": (recall + specificity) / 2}


def rates(pairs: Sequence[Pair], threshold: float, *, same_expert: bool = True) -> dict[str, float]:
    """Recall on follow-ups, specificity on new topics and their mean (balanced accuracy) of the rule."""
    return _score(_decide(pairs, threshold, same_expert), [p.continues for p in pairs])


def fit_threshold(pairs: Sequence[Pair], *, same_expert: bool = True) -> float:
    """The threshold of best balanced accuracy on ``pairs``: a cut point halfway between two observed
    similarities (the middle one among equally good cut points)."""
    values = np.unique([p.similarity for p in pairs])  # sorted
    cuts = np.concatenate([[values[0] - 0.01], (values[:-1] + values[1:]) / 2, [values[-1] + 0.01]])
    scores = np.array([rates(pairs, c, same_expert=same_expert)["balanced_accuracy"] for c in cuts])
    best = np.flatnonzero(np.isclose(scores, scores.max()))
    return float(cuts[best[len(best) // 2]])


async def _route(router: Router, experts: Sequence[Expert], texts: Sequence[str]) -> list[str]:
    """The top expert of each text, routed in order in one fresh session."""
    session = uuid.uuid4().hex
    chosen = [(await router.route(Query(t, session_id=session), experts)).experts[0] for t in texts]
    router.momentum.forget(session)
    return chosen


async def _pair(router: Router, first: str, second: str, continues: bool, group: int, e: list[str]) -> Pair:
    a, b = await router.embed(first), await router.embed(second)
    return Pair(continues, e[0] == e[1], float(np.dot(a, b)), group)


async def conversation_pairs(router: Router, experts: Sequence[Expert]) -> list[Pair]:
    """The fit set: every consecutive pair of turns of the hand-written conversations."""
    pairs = []
    for group, conversation in enumerate(CONVERSATIONS):
        texts = [text for text, _, _ in conversation]
        chosen = await _route(router, experts, texts)
        for i in range(1, len(texts)):
            continues = conversation[i][2] == "follow"
            pairs.append(await _pair(router, texts[i - 1], texts[i], continues, group, chosen[i - 1 : i + 1]))
    return pairs


def _require(data_dir: Path, relative: str) -> Path:
    path = Path(data_dir) / relative
    if not path.exists():
        raise ConfigError(
            f"evaluation data not found: {relative} is missing under {data_dir}; "
            "point --data at a copy of the shared evaluation data (default ../shared/data)",
            path=path,
        )
    return path


def _mt_bench(data_dir: Path) -> list[tuple[int, str, str]]:
    """``(question_id, first turn, second turn)`` of each MT-Bench conversation."""
    path = _require(data_dir, _MT_BENCH)
    out = []
    for line, row in read_jsonl(path, what="MT-Bench questions"):
        turns, qid = row.get("turns"), row.get("question_id")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) for t in turns[:2]):
            raise ConfigError("expected `turns`: a list of at least two strings", path=path, line=line)
        if not isinstance(qid, int):
            raise ConfigError("expected an integer `question_id`", path=path, line=line)
        out.append((qid, turns[0], turns[1]))
    return out


def _mt_bench_answers(data_dir: Path) -> dict[int, str]:
    """GPT-4's answer to each MT-Bench first turn, from the multi-turn judge prompts."""
    path = _require(data_dir, _MT_BENCH_JUDGEMENTS)
    out: dict[int, str] = {}
    for _, row in read_jsonl(path, what="MT-Bench judgements"):
        judge, prompt = row.get("judge"), row.get("user_prompt")
        multi_turn = isinstance(judge, list) and str(judge[-1]).endswith("multi-turn")
        if str(row.get("model", "")).startswith("gpt-4") and multi_turn and isinstance(prompt, str):
            found = _ANSWER.search(prompt)
            if found is not None:
                out[int(row["question_id"])] = found.group(1)
    return out


async def mt_bench_pairs(
    router: Router, experts: Sequence[Expert], data_dir: Path, *, negatives: int = 5, seed: int = 0
) -> list[Pair]:
    """The measurement set: MT-Bench follow-ups, and first turns of other conversations."""
    conversations = _mt_bench(data_dir)
    rng = random.Random(seed)
    pairs = []
    for group, (_, first, second) in enumerate(conversations):
        pairs.append(
            await _pair(router, first, second, True, group, await _route(router, experts, [first, second]))
        )
        others = [j for j in range(len(conversations)) if j != group]
        for j in rng.sample(others, min(negatives, len(others))):
            new = conversations[j][1]
            pairs.append(
                await _pair(router, first, new, False, group, await _route(router, experts, [first, new]))
            )
    return pairs


async def memory_floor(
    router: Router, data_dir: Path, thresholds: Sequence[float], *, negatives: int = 5, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per similarity floor: the share of MT-Bench first exchanges (turn and GPT-4's answer)
    recalled for their own follow-up, and kept out for ``negatives`` other first turns each."""
    conversations, answers = _mt_bench(data_dir), _mt_bench_answers(data_dir)
    rng = random.Random(seed)
    own, other = [], []
    for i, (qid, first, second) in enumerate(conversations):
        if qid not in answers:
            continue
        exchange = await router.embed(f"{first}\n{answers[qid]}")  # as MemoryStore embeds it
        own.append(float(np.dot(exchange, await router.embed(second))))
        others = [j for j in range(len(conversations)) if j != i]
        for j in rng.sample(others, min(negatives, len(others))):
            other.append(float(np.dot(exchange, await router.embed(conversations[j][1]))))
    a, b = np.array(own), np.array(other)
    return {
        f"{t:g}": {
            "exchanges": len(own),
            "recalled": float((a >= t).mean()),
            "kept_out": float((b < t).mean()),
        }
        for t in thresholds
    }


def _cross_validated(pairs: Sequence[Pair], *, same_expert: bool) -> dict[str, float]:
    """Leave-one-group-out: each group's pairs decided by the threshold fitted on the others."""
    given: list[bool] = []
    labels: list[bool] = []
    for group in sorted({p.group for p in pairs}):
        held = [p for p in pairs if p.group == group]
        threshold = fit_threshold([p for p in pairs if p.group != group], same_expert=same_expert)
        given.extend(_decide(held, threshold, same_expert))
        labels.extend(p.continues for p in held)
    return _score(given, labels)


async def evaluate_context_rule(
    router: Router,
    experts: Sequence[Expert],
    data_dir: Path,
    *,
    negatives: int = 5,
    seed: int = 0,
    shipped: float | None = None,
) -> dict[str, Any]:
    """Fits the rule's threshold on the hand-written conversations and measures it on MT-Bench.

    Args:
        router: the router (as the pipeline routes: its gate, settings and momentum).
        experts: the candidates.
        data_dir: the shared evaluation data folder.
        negatives: new-topic pairs per MT-Bench conversation.
        seed: seeds the choice of those pairs.
        shipped: the threshold in use (``moe_agents.continuity.THRESHOLD``), also reported.
    """
    fit = await conversation_pairs(router, experts)
    test = await mt_bench_pairs(router, experts, data_dir, negatives=negatives, seed=seed)
    rule = fit_threshold(fit)
    similar = fit_threshold(fit, same_expert=False)
    oracle = fit_threshold(test)
    floors = [0.0, rule] if shipped is None else [0.0, shipped]
    memory = await memory_floor(router, data_dir, floors, negatives=negatives, seed=seed)
    settings: dict[str, tuple[float, bool]] = {
        "every turn (before)": (-math.inf, False),
        "no turn": (math.inf, False),
        "same expert only": (math.inf, True),
        f"similarity only (≥ {similar:.3f})": (similar, False),
        f"same expert or similarity ≥ {rule:.3f} (fitted)": (rule, True),
    }
    if shipped is not None:
        settings[f"same expert or similarity ≥ {shipped:g} (shipped)"] = (shipped, True)
    rows: dict[str, dict[str, Any]] = {
        name: {
            "threshold": t,
            "same_expert": s,
            "fit": rates(fit, t, same_expert=s),
            "test": rates(test, t, same_expert=s),
        }
        for name, (t, s) in settings.items()
    }
    rows[f"oracle: same expert or similarity ≥ {oracle:.3f} (chosen on MT-Bench)"] = {
        "threshold": oracle,
        "same_expert": True,
        "fit": rates(fit, oracle),
        "test": rates(test, oracle),
    }
    curve = np.round(np.arange(-0.1, 0.61, 0.01), 2)
    return {
        "fit_set": {
            "name": "hand-written conversations",
            "pairs": len(fit),
            "continues": sum(p.continues for p in fit),
        },
        "test_set": {"name": "MT-Bench", "pairs": len(test), "continues": sum(p.continues for p in test)},
        "fitted_threshold": rule,
        "similarity_only_threshold": similar,
        "shipped_threshold": shipped,
        "cross_validated": {
            "rule": _cross_validated(fit, same_expert=True),
            "similarity only": _cross_validated(fit, same_expert=False),
        },
        "settings": {
            name: {**row, "threshold": row["threshold"] if math.isfinite(row["threshold"]) else None}
            for name, row in rows.items()
        },
        "memory_floor": memory,
        "curve": {
            "threshold": curve.tolist(),
            "fit": [rates(fit, t)["balanced_accuracy"] for t in curve],
            "test": [rates(test, t)["balanced_accuracy"] for t in curve],
        },
        "same_expert_rate": {
            "fit": {
                k: float(np.mean([p.same_expert for p in fit if p.continues == v]))
                for k, v in (("continues", True), ("new topic", False))
            },
            "test": {
                k: float(np.mean([p.same_expert for p in test if p.continues == v]))
                for k, v in (("continues", True), ("new topic", False))
            },
        },
    }
