"""A learned success model: the probability that each expert answers a query correctly, from the
query's embedding.

One L2-regularised logistic regression per expert (fitted jointly with L-BFGS in torch) over the
sentence embedding, trained from recorded outcomes (e.g. feedback, or a benchmark's correctness on
its training folds). Its probabilities are an ``expertise`` the permission function can rank
with ``cheapness``: a cost/quality router in the manner of RouteLLM's learned routers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SuccessModel"]


@dataclass(frozen=True, slots=True)
class SuccessModel:
    """Per-expert logistic heads over query embeddings.

    Attributes:
        experts: the expert names, one column each.
        weight: ``(D, M)`` coefficients.
        bias: ``(M,)`` intercepts.
    """

    experts: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        outcomes: np.ndarray,
        experts: Sequence[str],
        *,
        l2: float = 1e-3,
        max_iter: int = 200,
    ) -> SuccessModel:
        """Fits one logistic head per expert.

        Args:
            vectors: ``(N, D)`` query embeddings.
            outcomes: ``(N, M)`` scores in [0, 1] (1: the expert answered well).
            experts: the M expert names.
            l2: ridge penalty on the coefficients (not the intercepts).
            max_iter: L-BFGS iterations.
        """
        import torch

        x = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        y = torch.as_tensor(np.asarray(outcomes, dtype=np.float32))
        if x.ndim != 2 or y.shape != (x.shape[0], len(experts)):
            raise ValueError(
                f"need vectors (N, D) and outcomes (N, {len(experts)}); got {x.shape}, {y.shape}"
            )
        w = torch.zeros(x.shape[1], len(experts), requires_grad=True)  # (D, M)
        b = torch.zeros(len(experts), requires_grad=True)  # (M,)
        opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = x @ w + b  # (N, M)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(tuple(experts), w.detach().numpy().copy(), b.detach().numpy().copy())

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """``(N, M)`` probability that each expert answers each query well."""
        logits = np.asarray(vectors, dtype=np.float32) @ self.weight + self.bias
        return 1.0 / (1.0 + np.exp(-logits))
