"""One layer's expert selection for a batch of tokens, vectorised over tokens.

The cache bonus is the project's ``permission`` function, like at every other scale: a resident
expert's persistence factor is ``1 + h`` with the hysteresis ``h = exp(λ·Δ) − 1`` and zero cost.
Experts are ranked by the log of their permission, ``log softmax(logits + bias) + log
persistence``; the log-sum-exp is the same for every expert of a token and ``log(1 + h) = λ·Δ``, so
the ranking is that of ``logits + bias + λ·Δ·resident``, which needs no second softmax (a test
checks the identity against ``permission``). Selection biases (trust, load balance) are the
``bias``. The model's own top-J picks are kept, the other ``k − J`` slots go to the
best adjusted scores, and the routing weights come from the model's *original* softmax probabilities
over the final set (renormalised when the model renormalises), so a bonus changes who is asked,
never how much a chosen expert's answer counts relative to the model's own opinion.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Routing", "select_experts"]


class Routing(NamedTuple):
    """The experts chosen for each token and their weights.

    Attributes:
        weights: ``(T, k)`` float32 routing weights (sum 1 per token when normalised).
        indices: ``(T, k)`` expert ids; the first ``J`` columns are the model's protected picks.
    """

    weights: torch.Tensor
    indices: torch.Tensor


def select_experts(
    logits: torch.Tensor,
    top_k: int,
    *,
    own: torch.Tensor | None = None,
    resident: torch.Tensor | None = None,
    lam: float = 0.0,
    delta: float | torch.Tensor = 0.0,
    protect_top_j: int = 0,
    bias: torch.Tensor | None = None,
    normalize: bool = True,
) -> Routing:
    """Selects ``top_k`` experts per token from router logits.

    Args:
        logits: ``(T, E)`` router logits.
        top_k: experts per token.
        own: ``(T, k)`` the model's own top-k choice, best first, when the caller has it (the
            patched router passes what the model's router returned); computed otherwise.
        resident: ``(E,)`` bool, experts in the cache now (``None``: no cache bonus).
        lam: the cache bonus λ (in units of ``delta``).
        delta: Δ_layer, the running mean of the per-token logit range (a float or a 0-dim tensor,
            which keeps the whole selection on the device without a host sync).
        protect_top_j: the model's own top-J picks that are never displaced.
        bias: ``(E,)`` logit bias for selection only (trust + load balance), or ``None``.
        normalize: renormalise the weights over the chosen set (the model's ``norm_topk_prob``).

    Returns:
        The chosen experts and their weights from the model's original probabilities.
    """
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)  # (T, E), as the model computes it
    if own is None:
        own = torch.topk(probs, top_k, dim=-1).indices  # (T, k), the model's own choice
    j = min(protect_top_j, top_k)
    bonus = resident is not None and lam > 0.0
    if j == top_k or (bias is None and not bonus):
        indices = own
    else:
        adjust = bias  # (E,) log-permission offset shared by every token
        if bonus:
            assert resident is not None
            # log persistence = log(1 + h·resident) with h = exp(λΔ) − 1, i.e. exactly λΔ·resident
            log_persistence = resident.to(device=logits.device, dtype=torch.float) * (delta * lam)  # (E,)
            adjust = log_persistence if adjust is None else adjust + log_persistence
        assert adjust is not None  # a bias, a bonus, or both
        protected = own[:, :j]  # (T, J)
        scores = (logits.float() + adjust).scatter_(-1, protected, float("-inf"))  # (T, E)
        _, fill = torch.topk(scores, top_k - j, dim=-1)  # (T, k − J)
        indices = torch.cat([protected, fill], dim=-1)  # (T, k)
    weights = probs.gather(
        -1, indices
    )  # (T, k): the model's arithmetic, so unmoved picks keep their weights exactly
    if normalize:
        weights /= weights.sum(dim=-1, keepdim=True)
    return Routing(weights, indices)
