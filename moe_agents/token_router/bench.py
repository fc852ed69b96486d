"""Token-router benchmark: a tiny Qwen3-MoE trained from scratch on GSM8K, replayed through expert caches.

``train_tiny_moe`` trains (or reuses) a seeded Qwen3-MoE-architecture causal LM on GSM8K *train*
questions and answers with a byte-level tokenizer (no download). ``evaluate_token_router`` replays
held-out GSM8K *test* text at batch size 1, token by token with a KV cache (decode) and whole
sequences (prefill), for plain top-k routing (with LRU, LRU+hysteresis and Belady caches, all fed the
same plain trace) and for the token router at each λ × cache size, and reports hit rate, ΔPPL, churn,
load entropy, MaxVio, dead experts and the selection overhead against the issue's targets.
``plot_token_router`` draws the hit-rate vs ΔPPL Pareto plot.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

from ..errors import ConfigError
from .cache import ExpertCache, belady_hit_rate
from .metrics import CacheStats
from .patch import patch
from .policy import TokenPolicy

__all__ = ["evaluate_token_router", "plot_token_router", "targets", "train_tiny_moe"]

log = structlog.get_logger(__name__)

BOS, EOS = 256, 257
VOCAB = 264  # 256 bytes + BOS/EOS, padded to a multiple of 8
SEQ_LEN = 128
_MARKER = "train.json"


def encode(text: str) -> list[int]:
    """Byte-level tokens of ``text`` framed by BOS/EOS."""
    return [BOS, *text.encode("utf-8"), EOS]


def _gsm8k(data_dir: Path, split: str, limit: int | None = None) -> list[str]:
    path = Path(data_dir) / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"GSM8K {split} split not found at {path}")
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            texts.append(f"Question: {item['question']}\nAnswer: {item['answer']}")
            if limit is not None and len(texts) >= limit:
                break
    return texts


def _config(layers: int, experts: int, top_k: int, hidden: int) -> Any:
    from transformers import Qwen3MoeConfig

    heads = max(1, hidden // 32)
    return Qwen3MoeConfig(  # type: ignore[call-arg]  # head_dim is a Qwen3 config field untyped in __init__
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden // heads,
        num_experts=experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        max_position_embeddings=4 * SEQ_LEN,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )


def train_tiny_moe(
    data_dir: Path,
    out_dir: Path,
    *,
    layers: int = 4,
    experts: int = 32,
    top_k: int = 4,
    hidden: int = 128,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    max_minutes: float = 12.0,
    progress: bool = True,
) -> Path:
    """Trains a Qwen3-MoE causal LM from scratch on GSM8K train text, or reuses its cached checkpoint.

    The checkpoint folder is named by a hash of every setting (and the training file's size), so a
    second call with the same settings loads nothing and trains nothing.

    Args:
        data_dir: the shared data folder (reads ``gsm8k/train.jsonl`` only).
        out_dir: where checkpoints are cached.
        layers: decoder layers (all MoE).
        experts: experts per layer (E).
        top_k: experts per token (k).
        hidden: model width.
        steps: optimiser steps at most.
        batch_size: sequences of ``SEQ_LEN`` bytes per step.
        lr: AdamW peak learning rate (cosine decay to 10 %).
        seed: seeds the weights and the batches.
        max_minutes: stops training after this wall time even if ``steps`` are not done.
        progress: show a progress bar on stderr.

    Returns:
        The checkpoint folder (``save_pretrained`` format, with ``train.json``).
    """
    from transformers import Qwen3MoeForCausalLM

    train_file = Path(data_dir) / "gsm8k" / "train.jsonl"
    texts = _gsm8k(data_dir, "train")
    settings = {
        "layers": layers, "experts": experts, "top_k": top_k, "hidden": hidden, "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "max_minutes": max_minutes, "seq_len": SEQ_LEN,
        "data": [train_file.name, train_file.stat().st_size], "vocab": VOCAB,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(out_dir) / f"tiny-qwen3-moe-{key}"
    if (path / _MARKER).is_file():
        log.info("token_bench.checkpoint_reused", path=str(path))
        return path

    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(_config(layers, experts, top_k, hidden))
    model.train()
    stream = torch.tensor([t for text in texts for t in encode(text)], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int, elapsed: float) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        # cosine decay over whichever budget runs out first: the steps or the wall time
        done = max((step - warmup) / max(1, steps - warmup), elapsed / (max_minutes * 60))
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))

    start, losses, step = time.perf_counter(), [], 0
    bar = _progress(progress)
    with bar:
        task = bar.add_task("training tiny Qwen3-MoE", total=steps)
        for step in range(steps):
            elapsed = time.perf_counter() - start
            if elapsed > max_minutes * 60:
                break
            offsets = torch.randint(0, len(stream) - SEQ_LEN - 1, (batch_size,), generator=gen)
            batch = torch.stack([stream[o : o + SEQ_LEN] for o in offsets.tolist()])  # (B, T)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, elapsed)
            out = model(input_ids=batch, labels=batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(out.loss.detach().item())
            bar.update(task, advance=1, description=f"training tiny Qwen3-MoE (loss {losses[-1]:.3f})")
        else:
            step = steps
    minutes = (time.perf_counter() - start) / 60
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tail = losses[-50:] or [float("nan")]
    record = {
        "settings": settings,
        "steps_done": step,
        "minutes": minutes,
        "final_loss": sum(tail) / len(tail),
    }
    (path / _MARKER).write_text(json.dumps(record, indent=2))
    log.info(
        "token_bench.trained",
        path=str(path),
        steps=step,
        minutes=round(minutes, 2),
        loss=record["final_loss"],
    )
    return path


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )


class _RecordingCache(ExpertCache):
    """An expert cache that also keeps the trace it served: per layer, the ``(T, k)`` experts."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int, policy: str = "lru") -> None:
        super().__init__(num_layers, num_experts, capacity, policy)
        self.trace: list[list[torch.Tensor]] = [[] for _ in range(num_layers)]

    def access(self, layer: int, experts_needed: torch.Tensor) -> tuple[int, int]:
        """Records the rows, then serves them like ``ExpertCache.access``."""
        self.trace[layer].append(torch.as_tensor(experts_needed).detach().long().cpu().clone())
        return super().access(layer, experts_needed)

    def layer_traces(self) -> list[torch.Tensor]:
        """Per layer, the ``(T, k)`` experts in access order."""
        return [torch.cat(rows) for rows in self.trace]


def _docs(data_dir: Path, tokens: int) -> list[torch.Tensor]:
    """Held-out GSM8K test texts (from the first), cut to ``tokens`` byte tokens in all."""
    docs, total = [], 0
    for text in _gsm8k(data_dir, "test"):
        ids = encode(text)[: min(SEQ_LEN * 4, tokens - total)]
        if len(ids) < 2:
            break
        docs.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
    return docs


@torch.no_grad()
def _replay(model: nn.Module, docs: Sequence[torch.Tensor], mode: str) -> tuple[float, int]:
    """Negative log-likelihood summed over predicted tokens, and their count, in decode or prefill mode."""
    nll, count = 0.0, 0
    for doc in docs:
        ids = doc.unsqueeze(0)  # (1, T)
        if mode == "prefill":
            logits = model(input_ids=ids).logits[0, :-1]  # (T-1, V)
        else:
            past, rows = None, []
            for t in range(ids.shape[1] - 1):
                out = model(input_ids=ids[:, t : t + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
                rows.append(out.logits[0, -1])
            logits = torch.stack(rows)  # (T-1, V)
        nll += float(torch.nn.functional.cross_entropy(logits.float(), doc[1:], reduction="sum"))
        count += doc.numel() - 1
    return nll, count


def _cache_row(stats: CacheStats) -> dict[str, float]:
    return {
        "hit_rate": stats.hit_rate,
        "churn": stats.churn,
        "repicks_per_token_layer": stats.repicks / max(1, stats.token_layers),
        "load_entropy": stats.load_entropy,
        "max_vio": stats.max_vio,
        "dead_experts": stats.dead_experts,
        "dead_experts_per_layer": stats.dead_experts / max(1, stats.load.shape[0]),
    }


def _simulate(trace: Sequence[torch.Tensor], num_experts: int, capacity: int, policy: str) -> CacheStats:
    cache = ExpertCache(len(trace), num_experts, capacity, policy)
    for layer, t in enumerate(trace):
        cache.access(layer, t)
    return cache.stats()


def _time_us(fn: Callable[[], object], repeats: int = 7, number: int = 200) -> float:
    """Median over ``repeats`` of the mean time of ``number`` calls, in µs."""
    for _ in range(20):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        runs.append((time.perf_counter() - start) / number * 1e6)
    return statistics.median(runs)


@torch.no_grad()
def _overhead(model: Any, policy: TokenPolicy, capacity: int, number: int) -> dict[str, float]:
    """µs per layer-token (decode shape: one token) of the router and the MoE block, patched and not."""
    cfg = model.config
    block = model.model.layers[0].mlp
    x = torch.randn(1, 1, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    flat = x.view(-1, cfg.hidden_size)
    warm = torch.randn(64, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    plain_router = _time_us(lambda: block.gate(flat), number=number)
    moe_block = _time_us(lambda: block(x), number=number)
    layers = len(model.model.layers)
    result = {"plain_router_us": plain_router, "moe_block_us": moe_block}
    for name, pol in (("neutral", TokenPolicy()), ("ours", policy)):
        cache = ExpertCache(layers, cfg.num_experts, capacity, "lru")
        with patch(model, pol, cache):
            gate = model.model.layers[0].mlp.gate
            gate(warm)  # Δ_layer and residency from a few tokens
            result[f"{name}_router_us"] = _time_us(functools.partial(gate, flat), number=number)
    result["selection_us"] = result["ours_router_us"] - result["neutral_router_us"]
    result["selection_pct_of_moe_block"] = 100 * result["selection_us"] / moe_block
    result["added_vs_unpatched_us"] = result["ours_router_us"] - plain_router
    result["added_vs_unpatched_pct_of_moe_block"] = 100 * result["added_vs_unpatched_us"] / moe_block
    return result


def evaluate_token_router(
    model_path: Path,
    data_dir: Path,
    *,
    cache_fractions: Sequence[float] | None = None,
    lambdas: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4),
    protect_top_j: int = 1,
    tokens: int = 2000,
    modes: Sequence[str] = ("decode", "prefill"),
    timing_calls: int = 200,
    progress: bool = True,
) -> dict[str, Any]:
    """Replays held-out GSM8K test text through plain top-k and the token router, with expert caches.

    Plain top-k is replayed once per mode; its trace feeds the LRU, LRU+hysteresis and Belady caches
    of every size. The token router (``TokenPolicy(lam=λ, protect_top_j=J)`` with an LRU cache whose
    residency it sees) is replayed for every λ × cache size.

    Args:
        model_path: a checkpoint from ``train_tiny_moe``.
        data_dir: the shared data folder (reads ``gsm8k/test.jsonl`` only, from its first problem).
        cache_fractions: resident experts per layer as a share of E (default ``(2k/E, 0.25, 0.5)``;
            equal capacities are measured once).
        lambdas: cache bonuses λ.
        protect_top_j: the model's own top-J picks never displaced.
        tokens: held-out byte tokens replayed per setting.
        modes: ``"decode"`` (one token per forward, KV cache) and/or ``"prefill"`` (whole texts).
        timing_calls: router/MoE-block calls per timing run.
        progress: show a progress bar on stderr.

    Returns:
        A JSON-ready report: ``model``, ``capacities``, per mode the ``plain`` rows (per capacity and
        cache policy) and ``ours`` rows (per capacity and λ), ``overhead`` and ``targets``.
    """
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(model_path)
    model.eval()
    cfg = model.config
    num_experts, top_k, layers = cfg.num_experts, cfg.num_experts_per_tok, cfg.num_hidden_layers
    if protect_top_j > top_k:
        raise ConfigError(f"protect_top_j={protect_top_j} exceeds the model's top-k {top_k}")
    fractions = cache_fractions if cache_fractions is not None else (2 * top_k / num_experts, 0.25, 0.5)
    capacities = sorted({min(num_experts, max(top_k, round(f * num_experts))) for f in fractions})
    docs = _docs(data_dir, tokens)
    record = (
        json.loads((Path(model_path) / _MARKER).read_text()) if (Path(model_path) / _MARKER).is_file() else {}
    )
    report: dict[str, Any] = {
        "model": {
            "path": str(model_path), "layers": layers, "experts": num_experts, "top_k": top_k,
            "hidden": cfg.hidden_size, "training": record,
        },
        "settings": {
            "lambdas": list(lambdas), "protect_top_j": protect_top_j, "tokens": sum(len(d) for d in docs),
            "documents": len(docs), "cache_policy_ours": "lru",
        },
        "capacities": capacities,
        "two_k_capacity": min(num_experts, 2 * top_k),
    }  # fmt: skip
    bar = _progress(progress)
    with bar:
        task = bar.add_task("replaying", total=len(modes) * (1 + len(capacities) * len(lambdas)))
        for mode in modes:
            bar.update(task, description=f"{mode}: plain top-k")
            recorder = _RecordingCache(layers, num_experts, num_experts)
            with patch(model, TokenPolicy(), recorder):
                nll, count = _replay(model, docs, mode)
            plain_ppl = math.exp(nll / count)
            trace = recorder.layer_traces()
            bar.advance(task)
            plain: dict[str, dict[str, Any]] = {}
            for cap in capacities:
                rows = {
                    p: _cache_row(_simulate(trace, num_experts, cap, p)) for p in ("lru", "lru+hysteresis")
                }
                rows["belady"] = {"hit_rate": belady_hit_rate(trace, cap, num_experts)}
                plain[str(cap)] = rows
            ours: dict[str, dict[str, Any]] = {}
            for cap in capacities:
                ours[str(cap)] = {}
                for lam in lambdas:
                    bar.update(task, description=f"{mode}: ours C={cap} λ={lam}")
                    cache = ExpertCache(layers, num_experts, cap, "lru")
                    with patch(model, TokenPolicy(lam=lam, protect_top_j=protect_top_j), cache):
                        nll_ours, _ = _replay(model, docs, mode)
                    ppl = math.exp(nll_ours / count)
                    ours[str(cap)][str(lam)] = {
                        **_cache_row(cache.stats()),
                        "ppl": ppl,
                        "delta_ppl_pct": 100 * (ppl / plain_ppl - 1),
                    }
                    bar.advance(task)
            report[mode] = {"plain_ppl": plain_ppl, "predicted_tokens": count, "plain": plain, "ours": ours}
            log.info("token_bench.mode_done", mode=mode, plain_ppl=round(plain_ppl, 4))
    lam_for_timing = max([lam for lam in lambdas if lam > 0] or [0.1])
    report["overhead"] = _overhead(
        model,
        TokenPolicy(lam=lam_for_timing, protect_top_j=protect_top_j),
        report["two_k_capacity"],
        timing_calls,
    )
    report["overhead"]["lambda"] = lam_for_timing
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any], mode: str = "decode") -> dict[str, Any]:
    """The issue's targets at a cache of 2k experts per layer, checked for every λ > 0.

    Returns:
        Per λ: each target's measured value, bound and ``met``; the selection-overhead target
        (one number for all λ) under ``overhead``.
    """
    if mode not in report:
        mode = next(m for m in ("decode", "prefill") if m in report)
    cap = str(report["two_k_capacity"])
    if cap not in report[mode]["ours"]:
        return {}
    plain = report[mode]["plain"][cap]["lru"]
    out: dict[str, Any] = {"mode": mode, "capacity": int(cap), "per_lambda": {}}
    for lam, row in report[mode]["ours"][cap].items():
        if float(lam) == 0.0:
            continue
        checks = {
            "hit_rate_gain_points": (100 * (row["hit_rate"] - plain["hit_rate"]), ">=", 15.0),
            "delta_ppl_pct": (row["delta_ppl_pct"], "<=", 1.0),
            "entropy_ratio": (row["load_entropy"] / max(plain["load_entropy"], 1e-12), ">=", 0.9),
            "dead_experts_per_layer_over_plain": (
                row["dead_experts_per_layer"] - plain["dead_experts_per_layer"], "<=", 2.0,
            ),
        }  # fmt: skip
        out["per_lambda"][lam] = {
            name: {"value": v, "bound": f"{op} {b}", "met": v >= b if op == ">=" else v <= b}
            for name, (v, op, b) in checks.items()
        }
        out["per_lambda"][lam]["all_met"] = all(c["met"] for c in out["per_lambda"][lam].values())
    if "overhead" in report:
        pct = report["overhead"]["selection_pct_of_moe_block"]
        out["overhead"] = {"value": pct, "bound": "<= 5.0", "met": pct <= 5.0}
    return out


def plot_token_router(report: dict[str, Any], path: Path) -> Path:
    """Hit rate vs ΔPPL (Pareto plot), one panel per mode: the token router's λ curve per cache size,
    plain top-k + LRU / LRU+hysteresis / Belady marked at ΔPPL 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("decode", "prefill") if m in report]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, cap in enumerate(report["capacities"]):
            color = f"C{i}"
            rows = report[mode]["ours"][str(cap)]
            lams = sorted(rows, key=float)
            ax.plot(
                [rows[lam]["delta_ppl_pct"] for lam in lams],
                [rows[lam]["hit_rate"] for lam in lams],
                "o-", color=color, label=f"ours C={cap}",
            )  # fmt: skip
            for lam in lams:
                ax.annotate(f"λ={lam}", (rows[lam]["delta_ppl_pct"], rows[lam]["hit_rate"]), fontsize=7)
            plain = report[mode]["plain"][str(cap)]
            ax.scatter([0], [plain["lru"]["hit_rate"]], marker="s", color=color, label=f"top-k+LRU C={cap}")
            ax.scatter([0], [plain["belady"]["hit_rate"]], marker="*", s=120, color=color,
                       label=f"top-k+Belady C={cap}")  # fmt: skip
        ax.axvline(1.0, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("ΔPPL vs plain top-k (%)")
        ax.set_ylabel("expert-cache hit rate")
        ax.set_title(f"{mode} (E={report['model']['experts']}, k={report['model']['top_k']})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
