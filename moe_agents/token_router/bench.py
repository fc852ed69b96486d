"""Token-router benchmark: a tiny Qwen3-MoE trained from scratch on GSM8K, replayed through expert caches.

``evaluate_token_router`` replays held-out GSM8K *test* text at batch size 1, token by token with a
KV cache (decode) and whole sequences (prefill), for plain top-k routing (with LRU, LRU+hysteresis
and Belady caches, all fed the same plain trace) and for the token router's cache bonus at each
λ × cache size. The full policy's operating point (λ and the load-balancing step γ) is chosen on GSM8K
*train* text and then replayed on the test text. It reports hit rate, ΔPPL, churn, load entropy,
MaxVio, dead experts, the selection overhead (on the tiny model and on one MoE layer of the
deployment target's size) and real-offload decode speed, and checks the targets it is given
(``bench_report.TokenRouterTargets``). ``run_token_router_benchmark`` is the one command: train
(cached), evaluate, write JSON and PNG.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..eval_data import eval_data_dir
from ..logging import get_logger
from .bench_report import TokenRouterTargets, check_targets, plot_token_router
from .cache import ExpertCache, belady_hit_rate
from .calibrate import calibrate_trust
from .metrics import CacheStats
from .offload import OffloadHandle, OffloadStats, offload_experts
from .patch import patch
from .policy import TokenPolicy
from .train import MARKER, SEQ_LEN, VOCAB, encode, gsm8k_texts, progress_bar, train_tiny_moe
from .tune import QualityLimits, cache_row, replay, run_policy, tune_policy, with_ppl

__all__ = [
    "DEPLOYMENT_LAYER",
    "deployment_runs",
    "evaluate_token_router",
    "offload_speed",
    "run_token_router_benchmark",
]

log = get_logger(__name__)

# One MoE layer of the deployment target: the Qwen3-Omni-30B-A3B thinker (= Qwen3-30B-A3B) text layer.
DEPLOYMENT_LAYER = {"hidden": 2048, "experts": 128, "top_k": 8, "moe_intermediate": 768}


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


def _docs(data_dir: Path, tokens: int, split: str = "test", max_len: int = 4 * SEQ_LEN) -> list[torch.Tensor]:
    """GSM8K ``split`` texts (from the first), each cut to ``max_len`` and ``tokens`` byte tokens in all."""
    docs, total = [], 0
    for text in gsm8k_texts(data_dir, split):
        ids = encode(text)[: min(max_len, tokens - total)]
        if len(ids) < 2:
            break
        docs.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
    return docs


def _simulate(trace: Sequence[torch.Tensor], num_experts: int, capacity: int, policy: str) -> CacheStats:
    cache = ExpertCache(len(trace), num_experts, capacity, policy)
    for layer, t in enumerate(trace):
        cache.access(layer, t)
    return cache.stats()


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
def _overhead(
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
            **_overhead(model, policy, capacity, number, repeats),
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
    ids = torch.cat(_docs(data_dir, tokens))[:tokens].unsqueeze(0)
    warmup = torch.cat(_docs(data_dir, max(2, warmup_tokens), "train"))[:warmup_tokens].unsqueeze(0)
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


def _calibration_batches(data_dir: Path, tokens: int) -> list[torch.Tensor]:
    """GSM8K *train* texts (from the first), cut to ``SEQ_LEN`` and ``tokens`` byte tokens in all."""
    return [d.unsqueeze(0) for d in _docs(data_dir, tokens, "train", SEQ_LEN)]


def evaluate_token_router(
    model_path: Path,
    data_dir: Path,
    *,
    cache_fractions: Sequence[float] | None = None,
    lambdas: Sequence[float] = (0.0, 0.05, 0.1, 0.2, 0.4),
    balance_gammas: Sequence[float] = (0.0, 2e-4, 5e-4, 1e-3),
    protect_top_j: int = 1,
    tokens: int = 2000,
    tune_tokens: int | None = None,
    modes: Sequence[str] = ("decode", "prefill"),
    timing_calls: int = 200,
    deployment: bool = False,
    offload_tokens: int = 500,
    offload_repeats: int = 3,
    trust_max: float = 0.0,
    calibration_tokens: int | None = None,
    targets: TokenRouterTargets | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Replays held-out GSM8K test text through plain top-k and the token router, with expert caches.

    Plain top-k is replayed once per mode; its trace feeds the LRU, LRU+hysteresis and Belady caches
    of every size. The cache bonus alone (``TokenPolicy(lam=λ, protect_top_j=J)`` with an LRU cache
    whose residency it sees) is replayed for every λ × cache size. The full policy's operating point
    (λ > 0 × load-balancing γ) is chosen on GSM8K train text at the 2k cache (``tuning``) and replayed
    on the test text as each mode's ``tuned`` row.

    Args:
        model_path: a checkpoint from ``train_tiny_moe``.
        data_dir: the evaluation data folder (reads ``gsm8k/test.jsonl``, and ``train.jsonl`` for tuning).
        cache_fractions: resident experts per layer as a share of E (default ``(2k/E, 0.25, 0.5)``;
            equal capacities are measured once).
        lambdas: cache bonuses λ.
        balance_gammas: load-balancing steps γ tried in the tuning.
        protect_top_j: the model's own top-J picks never displaced.
        tokens: held-out byte tokens replayed per setting.
        tune_tokens: train byte tokens replayed per tuning setting (default ``tokens``).
        modes: ``"decode"`` (one token per forward, KV cache) and/or ``"prefill"`` (whole texts); the
            tuning uses the first.
        timing_calls: router/MoE-block calls per timing run.
        deployment: also time the selection and the real-offload speed on one MoE layer of the
            deployment target's size (``deployment_runs``; builds a 2.4 GB layer).
        offload_tokens: tokens decoded per run of the real-offload speed test (``offload_speed`` at
            the 2k capacity with the tuned policy; at most 100 on the deployment-size layer); 0 skips it.
        offload_repeats: timed runs per setting of the speed test.
        trust_max: when > 0, per-expert trust is calibrated on GSM8K *train* text (``calibrate_trust``) and
            an extra row "tuned + trust" (2k capacity) is replayed per mode.
        calibration_tokens: train byte tokens for the trust calibration (default ``tokens``).
        targets: checked on the results (``check_targets``); their quality limits are also the
            tuning's (default ``QualityLimits()``).
        progress: show a progress bar on stderr.

    Returns:
        A JSON-ready report: ``model``, ``capacities``, ``tuning``, per mode the ``plain`` rows (per
        capacity and cache policy), ``ours`` rows (per capacity and λ), the ``tuned`` row and, with
        trust, a ``trust`` row; ``overhead``, ``offload`` (unless skipped), with ``deployment``
        ``deployment_overhead`` and ``deployment_offload``, and with ``targets`` their checks.

    Raises:
        ConfigError: ``protect_top_j`` exceeds the model's top-k, or the data is missing.
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
    cap2k = min(num_experts, 2 * top_k)
    docs = _docs(data_dir, tokens)
    train_docs = _docs(data_dir, tune_tokens or tokens, "train")
    marker = Path(model_path) / MARKER
    report: dict[str, Any] = {
        "model": {
            "path": str(model_path), "layers": layers, "experts": num_experts, "top_k": top_k,
            "hidden": cfg.hidden_size, "training": json.loads(marker.read_text()) if marker.is_file() else {},
        },
        "settings": {
            "lambdas": list(lambdas), "balance_gammas": list(balance_gammas), "protect_top_j": protect_top_j,
            "tokens": sum(len(d) for d in docs), "documents": len(docs), "cache_policy_ours": "lru",
        },
        "capacities": capacities,
        "two_k_capacity": cap2k,
    }  # fmt: skip
    positive = [lam for lam in lambdas if lam > 0] or [0.1]
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task(
            "replaying",
            total=1 + len(positive) * len(balance_gammas) + len(modes) * (2 + len(capacities) * len(lambdas)),
        )

        def tuning_step(what: str) -> None:
            bar.update(task, description=f"tuning on train text: {what}", advance=1)

        tuning = tune_policy(
            model, train_docs, capacity=cap2k, lambdas=positive, gammas=balance_gammas,
            protect_top_j=protect_top_j, mode=modes[0], on_step=tuning_step,
            limits=targets.quality if targets is not None else QualityLimits(),
        )  # fmt: skip
        report["tuning"] = {"split": "gsm8k train", "documents": len(train_docs), **tuning.to_dict()}
        tuned = tuning.policy
        for mode in modes:
            bar.update(task, description=f"{mode}: plain top-k")
            recorder = _RecordingCache(layers, num_experts, num_experts)
            with patch(model, TokenPolicy(), recorder):
                nll, count = replay(model, docs, mode)
            plain_ppl = math.exp(nll / count)
            trace = recorder.layer_traces()
            bar.advance(task)
            plain: dict[str, dict[str, Any]] = {}
            for cap in capacities:
                rows = {
                    p: cache_row(_simulate(trace, num_experts, cap, p)) for p in ("lru", "lru+hysteresis")
                }
                rows["belady"] = {"hit_rate": belady_hit_rate(trace, cap, num_experts)}
                plain[str(cap)] = rows
            ours: dict[str, dict[str, Any]] = {}
            for cap in capacities:
                ours[str(cap)] = {}
                for lam in lambdas:
                    bar.update(task, description=f"{mode}: ours C={cap} λ={lam}")
                    policy = TokenPolicy(lam=lam, protect_top_j=protect_top_j)
                    row, nll_ours, _ = run_policy(model, docs, mode, policy, cap)
                    ours[str(cap)][str(lam)] = with_ppl(row, nll_ours, count, plain_ppl)
                    bar.advance(task)
            bar.update(task, description=f"{mode}: tuned policy")
            row, nll_tuned, _ = run_policy(model, docs, mode, tuned, cap2k)
            report[mode] = {
                "plain_ppl": plain_ppl, "predicted_tokens": count, "plain": plain, "ours": ours,
                "tuned": {
                    "label": f"ours λ={tuned.lam} γ={tuned.balance_gamma}", "lambda": tuned.lam,
                    "balance_gamma": tuned.balance_gamma, "capacity": cap2k,
                    **with_ppl(row, nll_tuned, count, plain_ppl),
                },
            }  # fmt: skip
            bar.advance(task)
            log.info("token_bench.mode_done", mode=mode, plain_ppl=round(plain_ppl, 4))
    report["overhead"] = {**_overhead(model, tuned, cap2k, timing_calls), "lambda": tuned.lam}
    report["overhead"]["balance_gamma"] = tuned.balance_gamma
    if deployment:
        runs = deployment_runs(tuned, data_dir, offload_tokens=min(offload_tokens, 100))
        report["deployment_overhead"] = runs["overhead"]
        if "offload" in runs:
            report["deployment_offload"] = runs["offload"]
    if trust_max > 0:
        report["trust_calibration"] = _trust_rows(
            model, report, docs, _calibration_batches(data_dir, calibration_tokens or tokens), modes,
            TokenPolicy(lam=tuned.lam, protect_top_j=protect_top_j, balance_gamma=tuned.balance_gamma,
                        trust_max=trust_max),
        )  # fmt: skip
    if offload_tokens > 0:
        report["offload"] = offload_speed(
            model_path, data_dir, capacity=cap2k, policy=tuned, tokens=offload_tokens,
            repeats=offload_repeats, model=model,
        )  # fmt: skip
    if targets is not None:
        report["targets"] = check_targets(report, targets)
    return report


def _trust_rows(
    model: Any,
    report: dict[str, Any],
    docs: Sequence[torch.Tensor],
    batches: list[torch.Tensor],
    modes: Sequence[str],
    policy: TokenPolicy,
) -> dict[str, Any]:
    """Calibrates trust (plain routing) on ``batches``, then replays ``policy`` with it at the 2k cache."""
    cap = report["two_k_capacity"]
    with patch(model, TokenPolicy()) as handle:
        trust = calibrate_trust(model, handle, batches)
    for mode in modes:
        row, nll, count = run_policy(model, docs, mode, policy, cap, trust)
        report[mode]["trust"] = {
            "label": f"ours λ={policy.lam} γ={policy.balance_gamma} + trust", "lambda": policy.lam,
            "balance_gamma": policy.balance_gamma, "trust_max": policy.trust_max,
            "capacity": cap, **with_ppl(row, nll, count, report[mode]["plain_ppl"]),
        }  # fmt: skip
    return {
        "split": "gsm8k train", "tokens": sum(b.numel() for b in batches), "documents": len(batches),
        "trust_max": policy.trust_max, "lambda": policy.lam,
        "trust_abs_max_per_layer": [float(t.abs().max()) for t in trust],
    }  # fmt: skip


def run_token_router_benchmark(
    data_dir: str | Path | None,
    out_dir: Path,
    *,
    max_minutes: float = 10.0,
    seed: int = 0,
    tokens: int = 2000,
    trust_max: float = 0.0,
    deployment: bool = True,
    targets: TokenRouterTargets | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Path, Path]:
    """The benchmark in one call: trains the tiny model (or reuses its cached checkpoint under
    ``out_dir/checkpoints``), evaluates it, and writes ``token_router.json`` and ``token_router.png``.

    ``data_dir`` is the evaluation data folder (``None``: ``$MOE_AGENTS_EVAL_DATA``); ``targets``,
    if given, are checked (see ``evaluate_token_router``).

    Returns:
        The report, the JSON path and the PNG path.

    Raises:
        ConfigError: no data folder is given, or GSM8K is missing from it.
    """
    data_dir = eval_data_dir(data_dir)
    checkpoint = train_tiny_moe(
        data_dir, out_dir / "checkpoints", seed=seed, max_minutes=max_minutes, progress=progress
    )
    report = evaluate_token_router(
        checkpoint, data_dir, tokens=tokens, trust_max=trust_max, deployment=deployment, targets=targets,
        progress=progress,
    )  # fmt: skip
    report["command"] = (
        f"moe-agents eval token-router --data {data_dir} --out {out_dir} --max-minutes {max_minutes} "
        f"--seed {seed} --tokens {tokens} --trust-max {trust_max}"
        + ("" if deployment else " --no-deployment")
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "token_router.json"
    path.write_text(json.dumps(report, indent=2))
    return report, path, plot_token_router(report, out_dir / "token_router.png")
