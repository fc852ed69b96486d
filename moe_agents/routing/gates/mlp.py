"""The MLP gate (``kind="mlp"``): ``GatingNetwork``, how it is trained, and its temperature calibration.

The training recipe, run by ``fit_gate`` on L2-normalised exemplar embeddings:

- **Class balancing**: the cross-entropy weighs each expert's exemplars by ``n / (E * n_e)``, so an
  expert with many exemplars does not drown out one with few.
- **Early stopping on a stratified split**: a seeded ``val_fraction`` of each expert's exemplars is
  held out (every expert keeps at least one for training). Training stops after ``patience`` epochs
  without the validation loss dropping by more than ``_MIN_DELTA`` and the best weights are restored;
  without a validation split the training loss is monitored instead.
- **Temperature calibration**: on the same held-out split, ``calibrate_temperature`` picks the
  softmax temperature (with a log-normal prior, clipped to ``_T_RANGE``) so that probabilities are
  honest, not just the argmax.
- **Local generators**: initial weights, dropout masks and batch order come from ``torch.Generator``s
  seeded from ``config.seed``, never from torch's global generator, so a fit is reproducible even
  while other threads sample from the global one.

torch is imported inside the functions that need it, so importing this module does not import it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import FitReport, GateConfig, Progress, SavedGate, softmax

if TYPE_CHECKING:
    import torch

__all__ = ["GatingNetwork", "calibrate_temperature", "fit_mlp", "load_mlp"]

_T_RANGE = (0.05, 20.0)  # calibrated temperatures are clipped to this range
_MIN_DELTA = 1e-4  # a smaller drop in validation loss does not count as an improvement


class GatingNetwork(SavedGate):
    """An MLP gate: ``softmax(mlp(x) / temperature)`` with a calibrated temperature.

    Built by ``fit_gate`` (``kind="mlp"``) or ``load_gate``.

    Args:
        net: the network (``D → hidden → hidden/2 → E``).
        experts: the expert names, in output order.
        config: the settings it was trained with.
        temperature: divides the logits before the softmax.
        report: how it was fitted.
    """

    kind = "mlp"

    def __init__(
        self,
        net: torch.nn.Module,
        experts: Sequence[str],
        *,
        config: GateConfig = GateConfig(),  # noqa: B008 -- frozen, so sharing the default is safe
        temperature: float = 1.0,
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=temperature, report=report)
        self.net = net.eval()
        self._params: tuple[torch.nn.Module, list[torch.nn.Parameter] | None] | None = None
        self._weights: tuple[np.ndarray, ...] = ()
        self._weights_key: tuple[int, ...] | None = None

    @property
    def dim(self) -> int:
        weights = self._numpy_weights()
        if weights is not None:
            return int(weights[0].shape[0])  # W1ᵀ is (D, H)
        return int(self.net.get_parameter("fc1.weight").shape[1])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The network's raw outputs ``(N, E)``, before the temperature and the softmax.

        Computed with numpy on a float32 copy of the weights: for the few rows a route asks about,
        a torch forward costs about a millisecond of dispatch (and wakes its thread pool), the
        arithmetic microseconds. A network of another shape than ``GateMLP`` runs through torch.
        """
        x = self._queries(embeddings)  # (N, D) float32
        weights = self._numpy_weights()
        if weights is None:
            import torch

            with torch.inference_mode():
                return self.net(torch.from_numpy(np.ascontiguousarray(x))).double().numpy()  # type: ignore[no-any-return]
        w1, b1, w2, b2, w3, b3 = weights
        h = _gelu(x @ w1 + b1)  # (N, H)
        h = _gelu(h @ w2 + b2)  # (N, H/2)
        return (h @ w3 + b3).astype(np.float64)  # (N, E)

    def _numpy_weights(self) -> tuple[np.ndarray, ...] | None:
        """``(W1ᵀ, b1, W2ᵀ, b2, W3ᵀ, b3)`` as float32 arrays, copied again only when a parameter
        changed (torch bumps a tensor's ``_version`` on every in-place write, ``load_state_dict``
        included) or ``net`` was replaced; ``None`` for a network that is not ``GateMLP``'s three
        linear layers."""
        net = self.net
        if self._params is None or self._params[0] is not net:
            params = dict(net.named_parameters())
            found = [params[n] for n in _MLP_ORDER] if params.keys() == _MLP_PARAMS else None
            self._params, self._weights_key = (net, found), None
        found = self._params[1]
        if found is None:
            return None
        key = tuple(p._version for p in found)
        if self._weights_key != key:
            arrays = [p.detach().cpu().numpy().astype(np.float32) for p in found]
            self._weights = tuple(a.T.copy() if a.ndim == 2 else a.copy() for a in arrays)
            self._weights_key = key
        return self._weights

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``: ``softmax(logits / temperature)``."""
        return softmax(self.logits(embeddings) / self.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy() for name, t in self.net.state_dict().items()}


def calibrate_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature ``T`` under which ``softmax(logits / T)`` best fits ``targets``.

    ``T`` minimises the summed negative log-likelihood plus ``(log T)² / 2`` (a standard log-normal
    prior centred on 1), searched over ``log T`` in ``[log 0.05, log 20]``: a coarse grid brackets
    the minimum and a golden-section search refines it. Without the prior a perfectly separated
    validation split would always drive ``T`` to the lower bound; with it, a few held-out exemplars
    move ``T`` only as far as they give evidence for.

    Args:
        logits: ``(N, E)`` raw scores.
        targets: ``(N,)`` indices of the right columns.

    Returns:
        The temperature; 1.0 when ``logits`` is empty or nothing beats it.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if len(z) == 0:
        return 1.0

    def objective(log_t: float) -> float:
        return len(y) * _nll(z, y, math.exp(log_t)) + 0.5 * log_t**2

    grid = np.linspace(math.log(_T_RANGE[0]), math.log(_T_RANGE[1]), 25)
    i = int(np.argmin([objective(u) for u in grid]))
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(40):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    best = (lo + hi) / 2
    return math.exp(best) if objective(best) < objective(0.0) else 1.0


# --- training -------------------------------------------------------------------------------------------


@functools.cache
def _mlp_class() -> type[torch.nn.Module]:
    """The gate's nn.Module, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class GateMLP(nn.Module):
        """``D → hidden → hidden/2 → E`` with GELU and dropout.

        Initial weights and dropout masks come from ``generator``, never from torch's global one,
        so fitting is reproducible even while other threads sample from the global generator.
        """

        def __init__(
            self, dim: int, hidden: int, n_experts: int, dropout: float, generator: torch.Generator
        ) -> None:
            super().__init__()
            self.fc1 = nn.utils.skip_init(nn.Linear, dim, hidden)
            self.fc2 = nn.utils.skip_init(nn.Linear, hidden, hidden // 2)
            self.head = nn.utils.skip_init(nn.Linear, hidden // 2, n_experts)
            self.dropout = dropout
            self.generator = generator
            for layer in (self.fc1, self.fc2, self.head):  # nn.Linear's own init, from our generator
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.drop(F.gelu(self.fc1(x)))  # (N, H)
            x = self.drop(F.gelu(self.fc2(x)))  # (N, H/2)
            return self.head(x)  # type: ignore[no-any-return]  # (N, E)

        def drop(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.dropout == 0.0:
                return x
            keep = torch.empty_like(x).bernoulli_(1.0 - self.dropout, generator=self.generator)
            return x * keep / (1.0 - self.dropout)

    return GateMLP


def _new_mlp(dim: int, n_experts: int, config: GateConfig) -> torch.nn.Module:
    import torch

    generator = torch.Generator().manual_seed(config.seed)
    return _mlp_class()(dim, config.hidden, n_experts, config.dropout, generator)


def _split(y: np.ndarray, n_experts: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split, stratified by expert; every expert keeps at least one training exemplar."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for e in range(n_experts):
        idx = rng.permutation(np.flatnonzero(y == e))
        n_val = 0
        if len(idx) >= 2 and val_fraction > 0:
            n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def fit_mlp(
    x: np.ndarray, y: np.ndarray, experts: tuple[str, ...], cfg: GateConfig, progress: Progress | None
) -> tuple[GatingNetwork, dict[str, Any]]:
    import torch
    from torch.nn import functional as F

    n_experts = len(experts)
    train_idx, val_idx = _split(y, n_experts, cfg.val_fraction, cfg.seed)
    xt, yt = torch.from_numpy(x[train_idx]), torch.from_numpy(y[train_idx])  # (n, D), (n,)
    xv, yv = torch.from_numpy(x[val_idx]), torch.from_numpy(y[val_idx])  # (v, D), (v,)
    counts = torch.bincount(yt, minlength=n_experts).double()
    balance = (len(yt) / (n_experts * counts)).float()  # (E,) each expert weighs the same in the loss

    net = _new_mlp(x.shape[1], n_experts, cfg)
    order_gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    best_loss, best_state, stale, epoch = math.inf, _snapshot(net), 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        net.train()
        order = torch.randperm(len(yt), generator=order_gen)
        total = 0.0
        for start in range(0, len(yt), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = F.cross_entropy(net(xt[batch]), yt[batch], weight=balance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        monitored = total / len(yt)  # without a validation split, stop on the training loss
        if len(yv):
            net.eval()
            with torch.no_grad():
                monitored = F.cross_entropy(net(xv), yv, weight=balance).item()
        if progress is not None:
            progress(epoch, cfg.max_epochs)
        if monitored < best_loss - _MIN_DELTA:
            best_loss, best_state, stale = monitored, _snapshot(net), 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    net.load_state_dict(best_state)
    gate = GatingNetwork(net, experts, config=cfg)
    val_accuracy = None
    if len(yv):
        val_logits = gate.logits(x[val_idx])  # (v, E)
        gate.temperature = calibrate_temperature(val_logits, y[val_idx])
        val_accuracy = float((val_logits.argmax(axis=1) == y[val_idx]).mean())
    stats = {"train_size": len(yt), "val_size": len(yv), "val_accuracy": val_accuracy, "epochs": epoch}
    return gate, stats


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def load_mlp(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> GatingNetwork:
    import torch

    net = _new_mlp(tensors["fc1.weight"].shape[1], len(experts), config)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    return GatingNetwork(net, experts, config=config, temperature=temperature, report=report)


_MLP_ORDER = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "head.weight", "head.bias")
_MLP_PARAMS = frozenset(_MLP_ORDER)

# Abramowitz & Stegun 7.1.26: |erf error| <= 1.5e-7, below float32's resolution of the activations
_ERF_P = np.float32(0.3275911)
_ERF_A = tuple(np.float32(a) for a in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
_SQRT_HALF = np.float32(1 / math.sqrt(2))


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as ``torch.nn.functional.gelu``, in float32 numpy: ``x · (1 + erf(x/√2)) / 2``."""
    z = np.abs(x)
    z *= _SQRT_HALF
    t = _ERF_P * z
    t += 1
    np.reciprocal(t, out=t)
    poly = _ERF_A[0] * t
    for a in _ERF_A[1:-1]:
        poly += a
        poly *= t
    poly += _ERF_A[-1]
    poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    poly *= z  # 1 - erf(|x|/√2)
    np.subtract(1, poly, out=poly)
    np.copysign(poly, x, out=poly)  # erf(x/√2)
    poly += 1
    poly *= x
    poly *= 0.5
    return poly


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))
