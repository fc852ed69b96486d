"""One layer's expert selection for a batch of tokens, vectorised over tokens.

The cache bonus goes through the project's ``permission`` function, like every other scale: a
logit bonus ``λ·Δ`` on resident experts is the probability factor ``exp(λ·Δ)``, i.e. a hysteresis
of ``exp(λ·Δ) − 1`` with zero cost. Selection biases (trust, load balance) are added to the logits
before that. The model's own top-J picks are kept, the other ``k − J`` slots go to the best adjusted
scores, and the routing weights come from the model's *original* softmax probabilities over the
final set (renormalised when the model renormalises), so a bonus changes who is asked, never how
much a chosen expert's answer counts relative to the model's own opinion.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..routing.permission import permission

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
    resident: torch.Tensor | None = None,
    lam: float = 0.0,
    delta: float = 0.0,
    protect_top_j: int = 0,
    bias: torch.Tensor | None = None,
    normalize: bool = True,
) -> Routing:
    """Selects ``top_k`` experts per token from router logits.

    Args:
        logits: ``(T, E)`` router logits.
        top_k: experts per token.
        resident: ``(E,)`` bool, experts in the cache now (``None``: no cache bonus).
        lam: the cache bonus λ (in units of ``delta``).
        delta: Δ_layer, the running mean of the per-token logit range.
        protect_top_j: the model's own top-J picks that are never displaced.
        bias: ``(E,)`` logit bias for selection only (trust + load balance), or ``None``.
        normalize: renormalise the weights over the chosen set (the model's ``norm_topk_prob``).

    Returns:
        The chosen experts and their weights from the model's original probabilities.
    """
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)  # (T, E), as the model computes it
    _, own = torch.topk(probs, top_k, dim=-1)  # (T, k), the model's own choice
    j = min(protect_top_j, top_k)
    bonus = resident is not None and lam > 0.0 and bool(resident.any())
    if j == top_k or (bias is None and not bonus):
        indices = own
    else:
        expertise = probs if bias is None else torch.softmax(logits.float() + bias, dim=-1)  # (T, E)
        if bonus:
            assert resident is not None
            resident_f = resident.to(device=expertise.device, dtype=expertise.dtype)  # (E,)
            _, _, expertise = permission(expertise, 0.0, resident_f, math.expm1(lam * delta))
        protected = own[:, :j]  # (T, J)
        scores = expertise.scatter(-1, protected, float("-inf"))
        _, fill = torch.topk(scores, top_k - j, dim=-1)  # (T, k − J)
        indices = torch.cat([protected, fill], dim=-1)  # (T, k)
    weights = probs.gather(-1, indices)  # (T, k)
    if normalize:
        weights /= weights.sum(dim=-1, keepdim=True)
    return Routing(weights, indices)
