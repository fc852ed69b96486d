"""The residency benchmark: a synthetic query trace over a model zoo that does not fit in memory.

Each query has a context drawn from a Markov chain that stays in the same context with probability
``locality`` and otherwise jumps to a uniformly drawn context (bursty, like real traffic). Every
model can answer every query; ``trust[context, model]`` is how good it is there. Selectors, each on
its own simulated ``Residency`` with the same budget, side by side on the same trace:

- ``permission`` (one row per swap-cost weight × hysteresis value): the model with the best
  ``permission(trust, weight × swap seconds, resident, hysteresis)``, i.e. ``Residency.choose``.
  Weight 1 is the seed's formula (cost = seconds); a load serves the queries that follow it, so
  ``1 - locality`` (one over the mean run length of a context) amortises it;
- ``lru`` (the null model): the most trusted model, whatever is resident; least recently used
  eviction (the same eviction every selector gets).

Reported per selector: hit rate, swaps per query, bytes and seconds loaded, mean quality (trust of
the chosen model), quality cost (share of queries where the chosen model is less trusted than the
best one, which for ``permission`` happens only because of residency) and mean regret in quality.

The default zoo is Qwen2.5 instruct models, sized as parameter count × bytes per parameter:
parameter counts as the Qwen2.5 model cards state them (0.49 B, 1.54 B, 3.09 B, 7.61 B, 14.7 B);
bf16 is 2 bytes per parameter; 4-bit is taken as 4.5 bits per parameter (4-bit weights plus
group-wise scales, as in GGUF Q4_K); Qwen2.5-Coder-7B has the 7B's parameter count. Their default
trust is synthetic (``default_trust``): a base quality that grows with size (4-bit a little below
bf16), with the coder model ahead in code contexts only, plus a per-context specialisation drawn
with the seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import anyio
import numpy as np

from ..errors import ConfigError
from ..residency import GB, Residency, ResidencyConfig
from .figures import agg_figure

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_QUALITY",
    "DEFAULT_ZOO",
    "default_trust",
    "plot_residency",
    "residency_trace",
]

_BF16 = 2.0
_Q4 = 4.5 / 8

DEFAULT_ZOO: Mapping[str, int] = MappingProxyType(
    {
        "qwen2.5-0.5b-bf16": round(0.49e9 * _BF16),
        "qwen2.5-1.5b-bf16": round(1.54e9 * _BF16),
        "qwen2.5-3b-bf16": round(3.09e9 * _BF16),
        "qwen2.5-7b-bf16": round(7.61e9 * _BF16),
        "qwen2.5-7b-q4": round(7.61e9 * _Q4),
        "qwen2.5-14b-q4": round(14.7e9 * _Q4),
        "qwen2.5-coder-7b-q4": round(7.61e9 * _Q4),
    }
)
"""Model name → bytes (0.98, 3.08, 6.18, 15.22, 4.28, 8.27 and 4.28 GB)."""

DEFAULT_QUALITY: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        "qwen2.5-0.5b-bf16": (0.45, 0.35),
        "qwen2.5-1.5b-bf16": (0.58, 0.50),
        "qwen2.5-3b-bf16": (0.65, 0.58),
        "qwen2.5-7b-bf16": (0.74, 0.68),
        "qwen2.5-7b-q4": (0.72, 0.66),
        "qwen2.5-14b-q4": (0.78, 0.74),
        "qwen2.5-coder-7b-q4": (0.60, 0.84),
    }
)
"""Synthetic base quality of the default zoo in general and in code contexts: it grows with size,
4-bit sits a little below bf16, and the coder model leads on code only."""

DEFAULT_BUDGET_BYTES = 16 * GB
"""A 16 GB accelerator: holds the 7B in bf16 alone, or two or three of the smaller models."""


def default_trust(
    n_contexts: int = 8,
    *,
    code_share: float = 0.25,
    spread: float = 0.05,
    seed: int = 0,
    models: Sequence[str] | None = None,
) -> np.ndarray:
    """``(C, M)`` synthetic trust for the default zoo: base quality plus per-context specialisation.

    Args:
        n_contexts: how many contexts (C).
        code_share: the share of contexts that are about code (the first ones).
        spread: standard deviation of each model's per-context specialisation.
        seed: draws the specialisation.
        models: which default-zoo models, in this order (M); all of them by default.
    """
    names = list(DEFAULT_QUALITY) if models is None else list(models)
    base = np.array([DEFAULT_QUALITY[n] for n in names])  # (M, 2): general, code
    is_code = np.arange(n_contexts) < round(code_share * n_contexts)
    rng = np.random.default_rng(seed)
    trust = np.where(is_code[:, None], base[:, 1], base[:, 0])  # (C, M)
    return np.clip(trust + rng.normal(0.0, spread, trust.shape), 0.0, 1.0)


class _SimModel:
    """A stand-in for a model in a simulated residency (never loaded)."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def load(self) -> None:
        return None

    async def unload(self) -> None:
        return None


def residency_trace(
    models: Mapping[str, int] | None = None,
    trust: np.ndarray | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    n_queries: int = 5000,
    hysteresis_values: Sequence[float] = (0.0, 0.1, 0.2, 0.4),
    swap_weights: Sequence[float] = (1.0, 0.1, 0.01, 0.001, 0.0),
    seed: int = 0,
    bandwidth: float = 1e9,
    locality: float = 0.9,
) -> dict[str, Any]:
    """Runs every selector on one synthetic trace and returns a JSON-ready report.

    Runs its own event loop, so call it from synchronous code.

    Args:
        models: model name → bytes; ``DEFAULT_ZOO`` by default.
        trust: ``(C, M)`` quality in [0, 1] of each model (columns in ``models`` order) in each
            context; ``default_trust(seed=seed)`` for the default zoo.
        budget_bytes: the memory budget.
        n_queries: trace length.
        hysteresis_values: one ``permission`` row per value and swap weight.
        swap_weights: ``ResidencyConfig.swap_cost_weight`` values.
        seed: draws the trace.
        bandwidth: load bandwidth in bytes per second (swap seconds = bytes / bandwidth).
        locality: probability that a query stays in the previous query's context.

    Returns:
        ``{"models", "budget_bytes", "n_queries", "n_contexts", "locality", "bandwidth", "seed",
        "rows"}``; each row has ``selector``, ``hysteresis`` and ``swap_weight`` (``None`` for
        ``lru``), ``hit_rate``,
        ``swaps``, ``swaps_per_selection``, ``evictions``, ``bytes_loaded``, ``load_s``,
        ``mean_quality``, ``quality_cost`` and ``mean_regret``.

    Raises:
        ConfigError: the shapes disagree, a model exceeds the budget, or an argument is out of range.
    """
    zoo = dict(DEFAULT_ZOO if models is None else models)
    names = list(zoo)
    if trust is None:
        if models is not None and not set(names) <= set(DEFAULT_QUALITY):
            raise ConfigError("residency_trace: pass trust for a model zoo other than the default")
        trust = default_trust(seed=seed, models=names)
    trust = np.asarray(trust, dtype=np.float64)
    if trust.ndim != 2 or trust.shape[1] != len(names):
        raise ConfigError(
            f"residency_trace: trust must have shape (contexts, {len(names)}), got {trust.shape}"
        )
    if n_queries < 1 or not 0.0 <= locality <= 1.0:
        raise ConfigError(
            f"residency_trace: need n_queries >= 1 and locality in [0, 1] ({n_queries}, {locality})"
        )

    contexts = _contexts(n_queries, trust.shape[0], locality, np.random.default_rng(seed))
    settings: list[tuple[str, float | None, float | None]] = [
        ("permission", float(h), float(w)) for w in swap_weights for h in hysteresis_values
    ]
    settings.append(("lru", None, None))
    rows = [
        anyio.run(_run, zoo, trust, contexts, selector, h, w, budget_bytes, bandwidth)
        for selector, h, w in settings
    ]
    return {
        "models": zoo,
        "budget_bytes": budget_bytes,
        "n_queries": n_queries,
        "n_contexts": int(trust.shape[0]),
        "locality": locality,
        "bandwidth": bandwidth,
        "seed": seed,
        "rows": rows,
    }


def _contexts(n: int, n_contexts: int, locality: float, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` contexts of a Markov chain that stays put with probability ``locality``."""
    stay = rng.random(n) < locality
    jumps = rng.integers(0, n_contexts, n)
    out = np.empty(n, dtype=np.int64)
    current = int(jumps[0])
    for i in range(n):
        if i > 0 and not stay[i]:
            current = int(jumps[i])
        out[i] = current
    return out


async def _run(
    zoo: dict[str, int],
    trust: np.ndarray,
    contexts: np.ndarray,
    selector: str,
    hysteresis: float | None,
    swap_weight: float | None,
    budget_bytes: int,
    bandwidth: float,
) -> dict[str, Any]:
    config = ResidencyConfig(
        budget_bytes=budget_bytes,
        hysteresis=hysteresis or 0.0,
        bandwidth_bytes_per_s=bandwidth,
        swap_cost_weight=1.0 if swap_weight is None else swap_weight,
    )
    residency = Residency(config, simulate=True)
    for name, size in zoo.items():
        residency.register(_SimModel(name), size_bytes=size)
    names = list(zoo)
    best = trust.argmax(axis=1)
    chosen = np.empty(len(contexts), dtype=np.int64)
    for i, ctx in enumerate(contexts):
        name = names[best[ctx]] if selector == "lru" else residency.choose(names, trust[ctx])
        async with residency.use(name):
            pass
        residency.note_selection(name, names[best[ctx]])
        chosen[i] = names.index(name)
    quality = trust[contexts, chosen]
    regret = trust[contexts, best[contexts]] - quality
    m = residency.metrics
    return {
        "selector": selector,
        "hysteresis": hysteresis,
        "swap_weight": swap_weight,
        "hit_rate": m.hit_rate,
        "swaps": m.swaps,
        "swaps_per_selection": m.swaps_per_selection,
        "evictions": m.evictions,
        "bytes_loaded": m.bytes_loaded,
        "load_s": m.load_s,
        "mean_quality": float(quality.mean()),
        "quality_cost": float((regret > 0).mean()),
        "mean_regret": float(regret.mean()),
    }


def plot_residency(report: Mapping[str, Any], path: Path) -> Path:
    """Writes a PNG: hit rate, mean quality and load seconds against hysteresis, with the ``lru``
    baseline as a horizontal line in each panel.

    Args:
        report: what ``residency_trace`` returned.
        path: the PNG to write (parent folders are created).

    Returns:
        ``path``.

    Raises:
        ConfigError: matplotlib is not installed (``moe-agents[eval]``).
    """
    rows = report["rows"]
    weights = sorted({r["swap_weight"] for r in rows if r["selector"] == "permission"}, reverse=True)
    lru = [r for r in rows if r["selector"] == "lru"]
    fig = agg_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    panels = (
        ("hit_rate", "hit rate"),
        ("mean_quality", "mean quality (trust)"),
        ("load_s", "seconds loading"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for w in weights:
            line = sorted(
                (r for r in rows if r["selector"] == "permission" and r["swap_weight"] == w),
                key=lambda r: r["hysteresis"],
            )
            ax.plot(
                [r["hysteresis"] for r in line],
                [r[key] for r in line],
                "o-",
                label=f"permission, weight {w:g}",
            )
        for r in lru:
            ax.axhline(r[key], color="grey", linestyle="--", label="plain LRU (most trusted)")
        ax.set_xlabel("hysteresis")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    budget = report["budget_bytes"] / GB
    fig.suptitle(
        f"Residency: {len(report['models'])} models, budget {budget:.0f} GB, "
        f"{report['n_queries']} queries, locality {report['locality']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
