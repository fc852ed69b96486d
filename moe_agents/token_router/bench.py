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

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..eval_data import eval_data_dir
from ..logging import get_logger
from .bench_report import TokenRouterTargets, check_targets, plot_token_router
from .bench_speed import DEPLOYMENT_LAYER, deployment_runs, gsm8k_docs, offload_speed, selection_overhead
from .cache import ExpertCache, belady_hit_rate
from .calibrate import calibrate_trust
from .metrics import CacheStats
from .patch import patch
from .policy import TokenPolicy
from .train import MARKER, SEQ_LEN, progress_bar, train_tiny_moe
from .tune import QualityLimits, cache_row, replay, run_policy, tune_policy, with_ppl

__all__ = [
    "DEPLOYMENT_LAYER",
    "deployment_runs",
    "evaluate_token_router",
    "offload_speed",
    "run_token_router_benchmark",
]

log = get_logger(__name__)

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


def _simulate(trace: Sequence[torch.Tensor], num_experts: int, capacity: int, policy: str) -> CacheStats:
    cache = ExpertCache(len(trace), num_experts, capacity, policy)
    for layer, t in enumerate(trace):
        cache.access(layer, t)
    return cache.stats()


def _calibration_batches(data_dir: Path, tokens: int) -> list[torch.Tensor]:
    """GSM8K *train* texts (from the first), cut to ``SEQ_LEN`` and ``tokens`` byte tokens in all."""
    return [d.unsqueeze(0) for d in gsm8k_docs(data_dir, tokens, "train", SEQ_LEN)]


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
    docs = gsm8k_docs(data_dir, tokens)
    train_docs = gsm8k_docs(data_dir, tune_tokens or tokens, "train")
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
    report["overhead"] = {**selection_overhead(model, tuned, cap2k, timing_calls), "lambda": tuned.lam}
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
