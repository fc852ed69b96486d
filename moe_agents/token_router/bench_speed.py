"""Token-router benchmark, timing side: the selection's cost per layer-token (on the tiny model and
on one MoE layer of the deployment target's size) and real-offload decode speed, plain routing
against the token router, as medians of alternating repeats."""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..logging import get_logger
from .offload import OffloadHandle, OffloadStats, offload_experts
from .patch import patch
from .policy import TokenPolicy
from .train import SEQ_LEN, VOCAB, encode, gsm8k_texts

__all__ = ["DEPLOYMENT_LAYER", "deployment_runs", "gsm8k_docs", "offload_speed", "selection_overhead"]

log = get_logger(__name__)


def gsm8k_docs(
    data_dir: Path, tokens: int, split: str = "test", max_len: int = 4 * SEQ_LEN
) -> list[torch.Tensor]:
    """GSM8K ``split`` texts (from the first), each cut to ``max_len`` and ``tokens`` byte tokens in all."""
    docs, total = [], 0
    for text in gsm8k_texts(data_dir, split):
        ids = encode(text)[: min(max_len, tokens - total)]
        if len(ids) < 2:
            break
        docs.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
    return docs



# One MoE layer of the deployment target: the Qwen3-Omni-30B-A3B thinker (= Qwen3-30B-A3B) text layer.
DEPLOYMENT_LAYER = {"hidden": 2048, "experts": 128, "top_k": 8, "moe_intermediate": 768}


def _time_us(fns: dict[str, Callable[[], object]], repeats: int = 7, number: int = 200) -> dict[str, float]:
    """Per function, the median over ``repeats`` of the mean time of ``number`` calls, in µs; the
    functions take turns in every repeat, so a slow spell of a shared machine hits them all alike."""
    for fn in fns.values():
        for _ in range(min(20, number)):
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(number):
                fn()
            runs[name].append((time.perf_counter() - start) / number * 1e6)
    return {name: statistics.median(r) for name, r in runs.items()}


class _FixedResidency:
    """A residency source whose resident set never changes (the first ``capacity`` experts): timing
    the router with it measures the selection alone, without any cache's bookkeeping."""

    def __init__(self, num_layers: int, num_experts: int, capacity: int) -> None:
        self.num_layers = num_layers
        self.num_experts = num_experts
        self._mask = torch.arange(num_experts) < capacity

    def resident_mask(self, layer: int) -> torch.Tensor:
        return self._mask

    def access(self, layer: int, experts: torch.Tensor) -> None:
        return None


@torch.no_grad()
def selection_overhead(
    model: Any, policy: TokenPolicy, capacity: int, number: int, repeats: int = 7
) -> dict[str, float]:
    """µs per layer-token (decode shape: one token) of the router and the MoE block, patched and not.

    ``selection_us`` is the router patched with ``policy`` minus the router patched with a neutral
    policy, both seeing the same fixed residency of ``capacity`` experts (so no cache bookkeeping is
    counted: the real-offload speed test counts that), timed in turns.
    """
    cfg = model.config
    block = model.model.layers[0].mlp
    x = torch.randn(1, 1, cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    flat = x.view(-1, cfg.hidden_size)
    warm = torch.randn(64, cfg.hidden_size, generator=torch.Generator().manual_seed(1))
    fns: dict[str, Callable[[], object]] = {"plain_router": functools.partial(block.gate, flat)}
    for name, pol in (("neutral", TokenPolicy()), ("ours", policy)):
        with patch(model, pol, _FixedResidency(len(model.model.layers), cfg.num_experts, capacity)):
            gate = model.model.layers[0].mlp.gate  # a patched router keeps working once unpatched
        gate(warm)  # Δ_layer from a few tokens
        fns[f"{name}_router"] = functools.partial(gate, flat)
    fns["moe_block"] = functools.partial(block, x)
    result = {f"{name}_us": us for name, us in _time_us(fns, repeats, number).items()}
    moe_block = result["moe_block_us"]
    result["selection_us"] = result["ours_router_us"] - result["neutral_router_us"]
    result["selection_pct_of_moe_block"] = 100 * result["selection_us"] / moe_block
    result["added_vs_unpatched_us"] = result["ours_router_us"] - result["plain_router_us"]
    result["added_vs_unpatched_pct_of_moe_block"] = 100 * result["added_vs_unpatched_us"] / moe_block
    return result


def _deployment_model() -> Any:
    """A one-layer Qwen3-MoE with the deployment target's MoE dimensions, seeded random weights."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    d = DEPLOYMENT_LAYER
    config = Qwen3MoeConfig(  # type: ignore[call-arg]  # head_dim is a Qwen3 config field untyped in __init__
        vocab_size=VOCAB, hidden_size=d["hidden"], intermediate_size=3 * d["hidden"],
        moe_intermediate_size=d["moe_intermediate"], num_hidden_layers=1,
        num_attention_heads=max(1, d["hidden"] // 64), num_key_value_heads=max(1, d["hidden"] // 512),
        head_dim=128, num_experts=d["experts"], num_experts_per_tok=d["top_k"], norm_topk_prob=True,
    )  # fmt: skip
    torch.manual_seed(0)
    return Qwen3MoeForCausalLM(config).eval()


def deployment_runs(
    policy: TokenPolicy,
    data_dir: Path,
    *,
    number: int = 20,
    repeats: int = 5,
    offload_tokens: int = 100,
    offload_repeats: int = 2,
) -> dict[str, Any]:
    """Selection overhead and real-offload speed on one MoE layer of the deployment target's size.

    A one-layer Qwen3-MoE with the Qwen3-Omni-30B-A3B thinker's MoE dimensions (``DEPLOYMENT_LAYER``:
    hidden 2048, 128 experts of intermediate size 768, top-8; float32, seeded random weights, about
    2.4 GB: for timing only, its routing means nothing for quality) is timed like the tiny model:
    router and MoE block for one decode token, patched with a neutral policy and with ``policy``,
    with a counting cache of 2k experts; then (unless ``offload_tokens`` is 0) the real-offload
    decode speed at 2k resident experts, where a miss copies an expert of 18.9 MB.

    Returns:
        ``overhead`` (the ``_overhead`` row plus ``dims``, ``capacity``, ``dtype``) and, with
        ``offload_tokens``, ``offload`` (the ``offload_speed`` rows).
    """
    model = _deployment_model()
    capacity = 2 * DEPLOYMENT_LAYER["top_k"]
    out: dict[str, Any] = {
        "overhead": {
            **selection_overhead(model, policy, capacity, number, repeats),
            "dims": dict(DEPLOYMENT_LAYER), "capacity": capacity, "dtype": "float32",
        },
    }  # fmt: skip
    if offload_tokens > 0:
        ids, warmup = _speed_text(data_dir, offload_tokens, 8)
        out["offload"] = {
            "capacity": capacity, "lambda": policy.lam, "balance_gamma": policy.balance_gamma,
            "protect_top_j": policy.protect_top_j, "tokens": ids.shape[1], "repeats": offload_repeats,
            "weights": "random (timing only)",
            **_speed_runs(model, ids, warmup, capacity, policy, offload_repeats),
        }  # fmt: skip
    return out


@torch.no_grad()
def _decode_seconds(
    model: nn.Module, ids: torch.Tensor, on_start: Callable[[], object] | None = None
) -> float:
    """Seconds to decode the byte tokens ``ids`` ``(1, T)`` one token per forward with a KV cache
    (teacher-forced, like the decode replay); ``on_start`` is called just before the clock starts."""
    cache = None
    if on_start is not None:
        on_start()
    start = time.perf_counter()
    for t in range(ids.shape[1]):
        cache = model(input_ids=ids[:, t : t + 1], cache=cache, use_cache=True).cache
    return time.perf_counter() - start


def _speed_runs(
    model: nn.Module,
    ids: torch.Tensor,
    warmup: torch.Tensor,
    capacity: int,
    policy: TokenPolicy,
    repeats: int,
) -> dict[str, Any]:
    """Resident, offloaded plain top-k and offloaded ``policy``, alternating ``repeats`` times."""
    tokens = ids.shape[1]
    runs: dict[str, list[float]] = {"resident": [], "plain": [], "ours": []}
    rows: dict[str, dict[str, float]] = {}
    _decode_seconds(model, warmup)
    with tempfile.TemporaryDirectory(prefix="moe-offload-") as folder:
        for _ in range(repeats):
            runs["resident"].append(_decode_seconds(model, ids))
            for name in ("plain", "ours"):
                with offload_experts(model, folder, capacity) as handle:
                    routed = patch(model, policy, cache=handle) if name == "ours" else None
                    try:
                        _decode_seconds(model, warmup)
                        marks: list[OffloadStats] = []
                        mark = functools.partial(_append_stats, marks, handle)
                        runs[name].append(_decode_seconds(model, ids, on_start=mark))
                        rows[name] = _stats_delta(handle.stats(), marks[0])
                    finally:
                        if routed is not None:
                            routed.unpatch()
    report: dict[str, Any] = {}
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        report[name] = {
            "tokens_per_s": tokens / median,
            "runs_tokens_per_s": [tokens / s for s in seconds],
            "seconds": median,
            **rows.get(name, {}),
        }
    report["speedup_ours_vs_plain"] = report["ours"]["tokens_per_s"] / report["plain"]["tokens_per_s"]
    log.info(
        "token_bench.offload_speed",
        resident=round(report["resident"]["tokens_per_s"], 1),
        plain=round(report["plain"]["tokens_per_s"], 1),
        ours=round(report["ours"]["tokens_per_s"], 1),
    )
    return report


def _speed_text(data_dir: Path, tokens: int, warmup_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, tokens)`` held-out GSM8K test bytes to time, ``(1, warmup_tokens)`` train bytes to warm up."""
    ids = torch.cat(gsm8k_docs(data_dir, tokens))[:tokens].unsqueeze(0)
    warmup = torch.cat(gsm8k_docs(data_dir, max(2, warmup_tokens), "train"))[:warmup_tokens].unsqueeze(0)
    return ids, warmup


def offload_speed(
    model_path: Path,
    data_dir: Path,
    *,
    capacity: int,
    policy: TokenPolicy,
    tokens: int = 500,
    repeats: int = 3,
    warmup_tokens: int = 16,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Real-offload decode speed: resident model vs offloaded plain top-k vs offloaded token router.

    The first ``tokens`` byte tokens of held-out GSM8K test text are decoded one token per forward
    with a KV cache (teacher-forced, as in the decode replay) (a) by the fully resident model, (b)
    with experts offloaded at ``capacity`` resident slots per layer and plain top-k, and (c) offloaded
    and patched with ``policy``, whose residency is the real slots. The three alternate ``repeats``
    times and the median speed is reported, since on a shared machine one run is within the noise.
    Each offloaded run starts from empty slots, warmed up on ``warmup_tokens`` train bytes (not
    timed, not counted); the model is restored after each run.

    Args:
        model_path: a checkpoint from ``train_tiny_moe``.
        data_dir: the evaluation data folder (reads ``gsm8k/test.jsonl`` and ``train.jsonl``).
        capacity: resident experts per layer.
        policy: the token router's policy for (c).
        tokens: decoded tokens per timed run.
        repeats: timed runs of each setting.
        warmup_tokens: tokens of the untimed warm-up decode.
        model: the loaded model, to skip loading ``model_path`` again.

    Returns:
        ``resident``, ``plain`` and ``ours`` rows (``tokens_per_s`` (median), ``runs_tokens_per_s``,
        ``seconds``; the offloaded ones also ``hit_rate``, ``hits``, ``misses``, ``bytes_copied``,
        ``copy_seconds`` of one timed run), the settings, and ``speedup_ours_vs_plain``.

    Raises:
        ConfigError: ``tokens``, ``repeats`` or ``warmup_tokens`` < 1, or the capacity does not fit.
    """
    if min(tokens, repeats, warmup_tokens) < 1:
        raise ConfigError(f"tokens={tokens}, repeats={repeats} and warmup_tokens={warmup_tokens} must be ≥ 1")
    if model is None:
        from transformers import Qwen3MoeForCausalLM

        model = Qwen3MoeForCausalLM.from_pretrained(model_path)
    model.eval()
    ids, warmup = _speed_text(data_dir, tokens, warmup_tokens)
    return {
        "capacity": capacity, "lambda": policy.lam, "balance_gamma": policy.balance_gamma,
        "protect_top_j": policy.protect_top_j, "tokens": ids.shape[1], "repeats": repeats,
        "warmup_tokens": warmup.shape[1], **_speed_runs(model, ids, warmup, capacity, policy, repeats),
    }  # fmt: skip


def _append_stats(marks: list[OffloadStats], handle: OffloadHandle) -> None:
    marks.append(handle.stats())


def _stats_delta(after: OffloadStats, before: OffloadStats) -> dict[str, float]:
    hits, misses = after.hits - before.hits, after.misses - before.misses
    return {
        "hit_rate": hits / max(1, hits + misses),
        "hits": hits,
        "misses": misses,
        "bytes_copied": after.bytes_copied - before.bytes_copied,
        "copy_seconds": after.copy_seconds - before.copy_seconds,
    }
