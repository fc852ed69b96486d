"""Choosing the token policy's operating point on calibration text: replay, measure, pick.

``tune_policy`` replays text through a model at batch size 1 (decode: one token per forward with a
KV cache; or prefill) for plain top-k and for every cache bonus λ × load-balancing step γ, with an
LRU expert cache of the given size whose residency the router sees, and picks the best hit rate
among the settings within the quality limits (``QualityLimits``, checked by ``row_checks``). Use text
you will not evaluate on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .cache import ExpertCache
from .metrics import CacheStats
from .patch import patch
from .policy import TokenPolicy

__all__ = ["QualityLimits", "Tuning", "check", "replay", "row_checks", "run_policy", "tune_policy"]

MODES = ("decode", "prefill")


@torch.no_grad()
def replay(model: nn.Module, docs: Sequence[torch.Tensor], mode: str) -> tuple[float, int]:
    """Negative log-likelihood summed over predicted tokens, and their count.

    Args:
        model: a causal LM.
        docs: 1-D token id tensors, replayed one at a time (batch size 1).
        mode: ``"decode"`` (one token per forward, KV cache) or ``"prefill"`` (each doc in one forward).

    Raises:
        ConfigError: an unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown replay mode {mode!r}; known: {list(MODES)}")
    nll, count = 0.0, 0
    for doc in docs:
        ids = doc.unsqueeze(0)  # (1, T)
        if mode == "prefill":
            logits = model(input_ids=ids).logits[0, :-1]  # (T-1, V)
        else:
            cache, rows = None, []
            for t in range(ids.shape[1] - 1):
                out = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True)
                cache = out.cache
                rows.append(out.logits[0, -1])
            logits = torch.stack(rows)  # (T-1, V)
        nll += float(torch.nn.functional.cross_entropy(logits.float(), doc[1:], reduction="sum"))
        count += doc.numel() - 1
    return nll, count


def cache_row(stats: CacheStats) -> dict[str, float]:
    """The JSON-ready metrics of a cache: hit rate, churn, re-picks, entropy, MaxVio, dead experts."""
    return {
        "hit_rate": stats.hit_rate,
        "churn": stats.churn,
        "repicks_per_token_layer": stats.repicks / max(1, stats.token_layers),
        "load_entropy": stats.load_entropy,
        "max_vio": stats.max_vio,
        "dead_experts": stats.dead_experts,
        "dead_experts_per_layer": stats.dead_experts / max(1, stats.load.shape[0]),
    }


def run_policy(
    model: nn.Module,
    docs: Sequence[torch.Tensor],
    mode: str,
    policy: TokenPolicy,
    capacity: int,
    trust: Sequence[torch.Tensor] | None = None,
) -> tuple[dict[str, float], float, int]:
    """One replay with ``policy`` and an LRU cache of ``capacity`` (and per-layer ``trust``, if given).

    Returns:
        The cache row (``cache_row``), the NLL sum and the number of predicted tokens.
    """
    cfg: Any = model.config
    cache = ExpertCache(cfg.num_hidden_layers, cfg.num_experts, capacity, "lru")
    with patch(model, policy, cache) as handle:
        for layer, t in enumerate(trust or ()):
            handle.set_trust(layer, t)
        nll, count = replay(model, docs, mode)
    return cache_row(cache.stats()), nll, count


def with_ppl(row: dict[str, float], nll: float, count: int, plain_ppl: float) -> dict[str, float]:
    """``row`` with ``ppl`` and ``delta_ppl_pct`` against ``plain_ppl``."""
    ppl = math.exp(nll / count)
    return {**row, "ppl": ppl, "delta_ppl_pct": 100 * (ppl / plain_ppl - 1)}


@dataclass(frozen=True, slots=True)
class QualityLimits:
    """What a cache-aware setting may cost against plain top-k + LRU at the same cache size.

    Attributes:
        delta_ppl_pct: the most perplexity may rise, in percent.
        entropy_ratio: the least load entropy, as a share of plain's.
        dead_experts_per_layer: the most dead experts per layer above plain's.
    """

    delta_ppl_pct: float = 1.0
    entropy_ratio: float = 0.9
    dead_experts_per_layer: float = 2.0


def row_checks(
    row: dict[str, Any],
    plain: dict[str, Any],
    limits: QualityLimits = QualityLimits(),
) -> dict[str, dict[str, Any]]:
    """A router row's quality against plain top-k + LRU at the same cache size, within ``limits``.

    Returns:
        Per check (``delta_ppl_pct``, ``entropy_ratio``, ``dead_experts_per_layer_over_plain``):
        ``value``, ``bound`` and ``met``.
    """
    return {
        "delta_ppl_pct": check(row["delta_ppl_pct"], "<=", limits.delta_ppl_pct),
        "entropy_ratio": check(
            row["load_entropy"] / max(plain["load_entropy"], 1e-12), ">=", limits.entropy_ratio
        ),
        "dead_experts_per_layer_over_plain": check(
            row["dead_experts_per_layer"] - plain["dead_experts_per_layer"],
            "<=",
            limits.dead_experts_per_layer,
        ),
    }


def check(value: float, op: str, bound: float) -> dict[str, Any]:
    """``{"value", "bound", "met"}`` for ``value op bound`` (``op`` is ``">="`` or ``"<="``)."""
    return {"value": value, "bound": f"{op} {bound}", "met": value >= bound if op == ">=" else value <= bound}


@dataclass(frozen=True, slots=True)
class Tuning:
    """The result of ``tune_policy``.

    Attributes:
        policy: the chosen policy.
        mode: the replay mode tuned in.
        capacity: the expert-cache size tuned for.
        tokens: tokens replayed per setting.
        plain_ppl: plain top-k perplexity on the text.
        plain_lru: the plain top-k + LRU cache row (the baseline of the checks).
        rows: per ``"λ/γ"``, the setting's cache row, ``ppl``, ``delta_ppl_pct`` and ``quality_met``.
    """

    policy: TokenPolicy
    mode: str
    capacity: int
    tokens: int
    plain_ppl: float
    plain_lru: dict[str, float]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the settings, the rows and the ``chosen`` λ and γ."""
        return {
            "mode": self.mode, "capacity": self.capacity, "tokens": self.tokens, "plain_ppl": self.plain_ppl,
            "plain_lru": self.plain_lru, "rows": self.rows,
            "chosen": {"lambda": self.policy.lam, "balance_gamma": self.policy.balance_gamma},
        }  # fmt: skip


def tune_policy(
    model: nn.Module,
    docs: Sequence[torch.Tensor],
    *,
    capacity: int,
    lambdas: Sequence[float] = (0.05, 0.1, 0.2, 0.4),
    gammas: Sequence[float] = (0.0, 2e-4, 5e-4, 1e-3),
    protect_top_j: int = 1,
    mode: str = "decode",
    limits: QualityLimits = QualityLimits(),
    on_step: Callable[[str], object] | None = None,
) -> Tuning:
    """Chooses λ and γ on calibration text: the best hit rate at ``capacity`` among the settings
    within every quality limit there, else among those within the ΔPPL limit, else λ = 0.1 alone.

    Args:
        model: a transformers MoE causal LM that ``patch`` supports.
        docs: 1-D token id tensors of calibration text.
        capacity: resident experts per layer.
        lambdas: cache bonuses λ (> 0) to try.
        gammas: load-balancing steps γ to try.
        protect_top_j: the model's own top-J picks never displaced.
        mode: ``"decode"`` or ``"prefill"``.
        limits: what a setting may cost in quality (default: ΔPPL ≤ 1 %, load entropy ≥ 0.9× plain,
            dead experts ≤ plain + 2 per layer).
        on_step: called with a description before the plain replay and each setting's (progress).

    Raises:
        ConfigError: no λ, a λ ≤ 0, an unknown mode, or settings that do not fit the model.
    """
    if not lambdas or min(lambdas) <= 0:
        raise ConfigError(f"lambdas must be positive and not empty, got {list(lambdas)}")
    step = on_step or (lambda _description: None)
    step("plain top-k")
    plain, nll, count = run_policy(model, docs, mode, TokenPolicy(), capacity)
    plain_ppl = math.exp(nll / count)
    rows: dict[str, dict[str, Any]] = {}
    for lam in lambdas:
        for gamma in gammas:
            step(f"λ={lam} γ={gamma}")
            policy = TokenPolicy(lam=lam, protect_top_j=protect_top_j, balance_gamma=gamma)
            row, nll, _ = run_policy(model, docs, mode, policy, capacity)
            row = with_ppl(row, nll, count, plain_ppl)
            checks = row_checks(row, plain, limits)
            rows[f"{lam}/{gamma}"] = {
                "lambda": lam, "balance_gamma": gamma, **row,
                "quality_met": all(c["met"] for c in checks.values()),
            }  # fmt: skip
    ranked = [r for r in rows.values() if r["quality_met"]] or [
        r for r in rows.values() if r["delta_ppl_pct"] <= limits.delta_ppl_pct
    ]
    best = max(ranked, key=lambda r: r["hit_rate"]) if ranked else {"lambda": 0.1, "balance_gamma": 0.0}
    chosen = TokenPolicy(lam=best["lambda"], protect_top_j=protect_top_j, balance_gamma=best["balance_gamma"])
    tokens = sum(len(d) for d in docs)
    return Tuning(chosen, mode, capacity, tokens, plain_ppl, plain, rows)
