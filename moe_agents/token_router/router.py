"""The patched router: a subclass of the model's own router class that adds the policy's biases.

``TokenRouted<Router>`` computes the model's own ``(router_logits, weights, indices)`` first, then
(unless the policy is neutral) reselects with ``select_experts`` and returns the same contract, so
``output_router_logits``, the aux loss and ``isinstance`` checks in transformers keep working.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cache import ResidencySource
from .policy import TokenPolicy
from .selection import select_experts

__all__ = ["LayerState", "TokenRouterMixin", "routed_class"]


@dataclass(slots=True, eq=False)
class LayerState:
    """What the router of one MoE layer keeps between batches, as tensors on the router's device.

    Attributes:
        layer: index among the model's MoE layers (the cache's layer).
        policy: the policy in force.
        cache: the expert cache that supplies residency and is told the final choice, or ``None``.
        delta: Δ_layer, the running mean of the per-token logit range (0-dim), ``None`` before the
            first batch.
        tokens: tokens seen (for the exact running mean).
        trust: ``(E,)`` unbounded trust per expert, or ``None``; set it with ``set_trust``.
        trust_bias: ``(E,)`` its logit bias ``trust_max · tanh(trust)``, or ``None``.
        balance: ``(E,)`` the load-balancing selection bias.
    """

    layer: int
    policy: TokenPolicy
    cache: ResidencySource | None = None
    delta: torch.Tensor | None = None
    tokens: int = 0
    trust: torch.Tensor | None = None
    trust_bias: torch.Tensor | None = None
    balance: torch.Tensor | None = None

    def set_trust(self, trust: torch.Tensor) -> None:
        """Sets the ``(E,)`` trust and computes its bounded logit bias once."""
        self.trust = torch.as_tensor(trust, dtype=torch.float).detach().clone()
        self.trust_bias = (
            self.policy.trust_max * torch.tanh(self.trust) if self.policy.trust_max > 0.0 else None
        )

    def observe(self, logits: torch.Tensor) -> None:
        """Folds a batch's per-token logit ranges ``(T, E)`` into Δ_layer (no host sync)."""
        count = logits.shape[0]
        if count == 0:
            return
        low, high = torch.aminmax(logits, dim=-1)  # (T,) each
        mean = (high - low).float().mean()
        rate = self.policy.delta_momentum
        if self.delta is None:
            self.delta = mean
        else:
            self.delta = torch.lerp(self.delta, mean, rate or count / (self.tokens + count))
        self.tokens += count

    def bias(self, num_experts: int, device: torch.device) -> torch.Tensor | None:
        """``(E,)`` selection logit bias (trust + balance), or ``None`` when there is none."""
        bias = self.trust_bias
        if bias is not None and bias.device != device:
            bias = self.trust_bias = bias.to(device)
        if self.policy.balance_gamma > 0.0:
            if self.balance is None:
                self.balance = torch.zeros(num_experts, device=device)
            bias = self.balance if bias is None else bias + self.balance
        return bias

    def rebalance(self, indices: torch.Tensor, num_experts: int) -> None:
        """DeepSeek-V3 step: over-loaded experts' bias falls by γ, under-loaded ones' rises."""
        if self.policy.balance_gamma == 0.0 or self.balance is None:
            return
        load = torch.bincount(indices.flatten(), minlength=num_experts).float()  # (E,)
        self.balance.add_(torch.sign(load.mean() - load), alpha=self.policy.balance_gamma)


class TokenRouterMixin(nn.Module):
    """Placed before the model's router class; ``routed_class`` builds the subclass."""

    token_state: LayerState
    top_k: int
    num_experts: int

    def forward(self, hidden_states: torch.Tensor) -> tuple[Any, Any, Any]:
        """The model's router contract: ``(router_logits (T, E), weights (T, k), indices (T, k))``."""
        router_logits, weights, indices = super().forward(hidden_states)
        state = self.token_state
        policy = state.policy
        if not policy.neutral and policy.protect_top_j < self.top_k:  # else no pick can move: the model's own
            state.observe(router_logits.detach())
            routing = select_experts(
                router_logits,
                self.top_k,
                own=indices,
                resident=None if state.cache is None else state.cache.resident_mask(state.layer),
                lam=policy.lam,
                delta=0.0 if state.delta is None else state.delta,
                protect_top_j=policy.protect_top_j,
                bias=state.bias(self.num_experts, router_logits.device),
                normalize=getattr(self, "norm_topk_prob", True),  # routers without the flag always normalise
            )
            weights, indices = routing.weights.to(weights.dtype), routing.indices
            state.rebalance(indices, self.num_experts)
        if state.cache is not None:
            state.cache.access(state.layer, indices.detach())
        return router_logits, weights, indices


@functools.cache
def routed_class(router_class: type[nn.Module]) -> type[nn.Module]:
    """The subclass of ``router_class`` whose forward applies the token policy (one per class)."""
    name = f"TokenRouted{router_class.__name__}"
    return type(name, (TokenRouterMixin, router_class), {"__module__": __name__})
