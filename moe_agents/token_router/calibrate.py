"""Per-expert trust from a quality signal: a calibration pass scored by each token's next-byte loss.

``calibrate_trust`` runs a patched model on calibration text, takes every token's cross-entropy on the
next token, standardises it over the whole pass, and gives each expert of each MoE layer the
routing-weighted mean of the *negated* standardised loss of the tokens routed to it (experts on whose
tokens the model does better get higher trust), standardised again over the experts that were seen
(unseen experts get 0). The result is set on the patch handle with ``set_trust``; the policy's
``trust_max`` bounds the logit bias it becomes (``trust_max · tanh(trust)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .patch import PatchHandle

__all__ = ["calibrate_trust", "trust_from_routing"]


def trust_from_routing(
    losses: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, num_experts: int
) -> torch.Tensor:
    """One layer's ``(E,)`` trust from standardised per-token losses and the routing that served them.

    Args:
        losses: ``(T,)`` standardised per-token losses (lower is better).
        weights: ``(T, k)`` routing weights.
        indices: ``(T, k)`` expert indices.
        num_experts: E.

    Returns:
        ``(E,)`` trust: the weighted mean of ``-losses`` per expert, standardised over the experts with
        positive routing weight; 0 for the others (and for all when fewer than two were seen).
    """
    w = weights.detach().float().flatten()  # (T·k,)
    idx = indices.detach().long().flatten()  # (T·k,)
    score = (-losses.detach().float()).unsqueeze(1).expand_as(weights).flatten()  # (T·k,)
    mass = torch.zeros(num_experts).index_add_(0, idx, w)  # (E,)
    total = torch.zeros(num_experts).index_add_(0, idx, w * score)  # (E,)
    seen = mass > 0
    trust = torch.zeros(num_experts)
    if int(seen.sum()) < 2:
        return trust
    mean = total[seen] / mass[seen]
    std = mean.std(unbiased=False)
    trust[seen] = (mean - mean.mean()) / std if float(std) > 0 else torch.zeros_like(mean)
    return trust


@torch.no_grad()
def calibrate_trust(
    model: nn.Module,
    handle: PatchHandle,
    batches: Iterable[torch.Tensor],
    *,
    layers: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Learns a per-expert trust for each MoE layer from the per-token loss, and sets it on ``handle``.

    Args:
        model: the patched causal LM (its forward takes ``input_ids`` and returns ``logits``).
        handle: the model's ``PatchHandle``; its routers' actual choices are the routing scored.
        batches: ``(B, T)`` (or ``(T,)``) token-id tensors of calibration text (never the test split).
        layers: MoE layers to calibrate and set (default: all); the others are left as they are.

    Returns:
        Per calibrated layer (in ``layers`` order), the ``(E,)`` trust that was set.

    Raises:
        ConfigError: the handle is not active, a layer index is out of range, or no batch has a
            token with a next token.
    """
    if not handle.active:
        raise ConfigError("the patch handle is no longer active; patch the model again")
    chosen = list(range(handle.num_layers)) if layers is None else list(layers)
    if any(not 0 <= layer < handle.num_layers for layer in chosen):
        raise ConfigError(f"layers {chosen} out of range for {handle.num_layers} MoE layers")
    routers = [model.get_submodule(name) for name in handle.names]
    num_experts = int(getattr(routers[0], "num_experts", 0))
    captured: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in routers]

    def hook(layer: int) -> Any:
        def record(_module: nn.Module, _inputs: Any, out: Any) -> None:
            captured[layer].append((out[1].detach().float().cpu(), out[2].detach().cpu()))

        return record

    hooks = [r.register_forward_hook(hook(i)) for i, r in enumerate(routers)]
    losses, valid = [], []
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids = batch.unsqueeze(0) if batch.dim() == 1 else batch  # (B, T)
            out = model(input_ids=ids, output_router_logits=True)
            logits = out.logits.float()  # (B, T, V)
            loss = torch.zeros(ids.shape, dtype=torch.float)
            loss[:, :-1] = (
                nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
                )
                .view(ids.shape[0], -1)
                .cpu()
            )
            mask = torch.zeros(ids.shape, dtype=torch.bool)
            mask[:, :-1] = True
            losses.append(loss.flatten())
            valid.append(mask.flatten())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    all_loss, all_valid = (
        torch.cat(losses or [torch.zeros(0)]),
        torch.cat(valid or [torch.zeros(0, dtype=torch.bool)]),
    )
    if int(all_valid.sum()) == 0:
        raise ConfigError("no calibration token with a next token: give batches of at least two tokens")
    kept = all_loss[all_valid]
    std = kept.std(unbiased=False)
    z = (all_loss - kept.mean()) / (std if float(std) > 0 else 1.0)  # (N,)
    result = []
    for layer in chosen:
        weights = torch.cat([w for w, _ in captured[layer]])  # (N, k)
        indices = torch.cat([i for _, i in captured[layer]])  # (N, k)
        if weights.shape[0] != z.shape[0]:
            raise ConfigError(f"layer {layer} routed {weights.shape[0]} tokens, expected {z.shape[0]}")
        trust = trust_from_routing(z[all_valid], weights[all_valid], indices[all_valid], num_experts)
        handle.set_trust(layer, trust)
        result.append(trust)
    return result
