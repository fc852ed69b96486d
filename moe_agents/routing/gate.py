"""Gates: from a query's embedding to a probability per expert, learned from the experts' exemplars.

Three kinds, fitted by ``fit_gate`` on L2-normalised float32 embeddings ``(N, D)``:

- ``mlp`` (``GatingNetwork``): a small MLP trained with class balancing and early stopping on a
  stratified validation split, then temperature-calibrated on that split;
- ``centroid`` (``CentroidGate``): softmax over cosine similarities to each expert's exemplar centroid;
- ``knn`` (``KNNGate``): the k most similar exemplars vote ``exp(similarity / temperature)``.

``predict_proba`` returns float64 ``(N, E)`` rows that sum to 1, columns in ``gate.experts`` order.
It blocks; async callers run it in a worker thread. A gate saves to ``<path>.safetensors`` plus a
JSON sidecar ``<path>.json`` and comes back with ``load_gate``. torch is imported on first use only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, InvalidInput

if TYPE_CHECKING:
    import torch

__all__ = [
    "CentroidGate",
    "FitReport",
    "Gate",
    "GateConfig",
    "GatingNetwork",
    "KNNGate",
    "calibrate_temperature",
    "fit_gate",
    "gate_fingerprint",
    "load_gate",
]

_FORMAT = "moe-agents-gate"
_VERSION = 1
_T_RANGE = (0.05, 20.0)  # calibrated temperatures are clipped to this range
_KNN_FLOOR = 1e-6  # every expert keeps at least this vote (relative to the nearest neighbour's)
_MIN_DELTA = 1e-4  # a smaller drop in validation loss does not count as an improvement

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class GateConfig:
    """How a gate is built and trained (the YAML ``router.gate:`` section).

    Attributes:
        kind: ``mlp`` (a trained network), ``centroid`` or ``knn`` (no training).
        hidden: width of the MLP's first layer (the second has ``hidden // 2``).
        dropout: dropout after each hidden layer, while training.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_epochs: most passes over the training split.
        patience: epochs without a better validation loss before training stops.
        val_fraction: share of each expert's exemplars held out for early stopping and calibration.
        batch_size: exemplars per optimiser step.
        seed: seeds the split, the initial weights, the batch order and the dropout masks.
        temperature: softmax temperature over cosine similarities (``centroid`` and ``knn``).
        k: neighbours that vote (``knn``).
    """

    kind: Literal["mlp", "centroid", "knn"] = "mlp"
    hidden: int = 256
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_epochs: int = 400
    patience: int = 30
    val_fraction: float = 0.2
    batch_size: int = 64
    seed: int = 0
    temperature: float = 0.05
    k: int = 5

    def __post_init__(self) -> None:
        if self.kind not in ("mlp", "centroid", "knn"):
            raise ConfigError(f"gate.kind must be one of mlp, centroid, knn; got {self.kind!r}")
        for name, least in (("hidden", 2), ("max_epochs", 1), ("patience", 1), ("batch_size", 1), ("k", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"gate.{name} must be an integer >= {least}, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"gate.seed must be an integer >= 0, got {self.seed!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"gate.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"gate.val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise ConfigError(f"gate.lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"gate.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.temperature > 0:
            raise ConfigError(f"gate.temperature must be > 0, got {self.temperature}")


@dataclass(frozen=True, slots=True)
class FitReport:
    """How a gate was fitted.

    Attributes:
        counts: exemplars per expert.
        train_size: exemplars trained on (all of them for ``centroid`` and ``knn``).
        val_size: exemplars held out.
        val_accuracy: share of held-out exemplars classified right (``None`` without a split).
        epochs: training epochs run (0 for ``centroid`` and ``knn``).
        temperature: the softmax temperature the gate uses (calibrated for ``mlp``).
        seconds: wall time of the fit.
    """

    counts: Mapping[str, int]
    train_size: int
    val_size: int
    val_accuracy: float | None
    epochs: int
    temperature: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"counts": dict(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitReport:
        """The inverse of ``to_dict``."""
        return cls(**{**data, "counts": {str(k): int(v) for k, v in data["counts"].items()}})


@runtime_checkable
class Gate(Protocol):
    """Maps query embeddings ``(N, D)`` to probabilities ``(N, E)`` over ``experts``.

    Attributes:
        experts: the column order of ``predict_proba``.
        config: the settings it was built with.
        report: how it was fitted (``None`` when unknown).
        encoder: the encoder its embeddings come from (set by ``save`` and ``load_gate``).
        fingerprint: the ``gate_fingerprint`` it was saved under, if any.
    """

    experts: tuple[str, ...]
    config: GateConfig
    report: FitReport | None
    encoder: str | None
    fingerprint: str | None

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``, rows summing to 1. Blocks."""
        ...

    def save(self, path: str | Path, *, encoder: str, fingerprint: str | None = None) -> None:
        """Writes ``path`` (tensors) and ``path.with_suffix('.json')`` (metadata)."""
        ...


class _SavedGate:
    """What the three gates share: identity, metadata and the on-disk format."""

    kind: ClassVar[str]

    def __init__(
        self, experts: Sequence[str], *, config: GateConfig, temperature: float, report: FitReport | None
    ) -> None:
        self.experts = tuple(experts)
        self.config = config
        self.temperature = temperature
        self.report = report
        self.encoder: str | None = None
        self.fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """The embedding size the gate expects."""
        raise NotImplementedError

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _queries(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2:
            raise InvalidInput(f"embeddings must have shape (N, D), got {x.shape}")
        if x.shape[1] != self.dim:
            raise ConfigError(
                f"the gate expects {self.dim}-d embeddings, got {x.shape[1]}-d (fitted with another encoder?)"
            )
        return x

    def save(self, path: str | Path, *, encoder: str, fingerprint: str | None = None) -> None:
        """Writes the tensors to ``path`` and the metadata to ``path.with_suffix('.json')``.

        Args:
            path: the tensor file; its parent folder is created if needed.
            encoder: the name of the encoder the embeddings come from (checked by ``load_gate``).
            fingerprint: the ``gate_fingerprint`` of the inputs, for caches.

        Raises:
            ConfigError: ``path`` ends in ``.json`` (the sidecar would overwrite it).
            OSError: the files cannot be written.
        """
        from safetensors.numpy import save as to_bytes

        path = Path(path)
        if path.suffix == ".json":
            raise ConfigError("a gate's tensor file cannot end in .json (that is its sidecar)", path=path)
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "kind": self.kind,
            "experts": list(self.experts),
            "encoder": encoder,
            "dim": self.dim,
            "temperature": self.temperature,
            "config": asdict(self.config),
            "report": None if self.report is None else self.report.to_dict(),
            "fingerprint": fingerprint,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, to_bytes(self._tensors(), metadata={"format": _FORMAT}))
        _write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        self.encoder, self.fingerprint = encoder, fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(experts={list(self.experts)}, T={self.temperature:.3g})"


class CentroidGate(_SavedGate):
    """Softmax over cosine similarities to each expert's normalised exemplar mean.

    Args:
        centroids: one unit vector per expert, ``(E, D)``.
        experts: the expert names, in ``centroids`` order.
        config: its settings (``temperature`` is used).
        report: how it was fitted.
    """

    kind = "centroid"

    def __init__(
        self,
        centroids: np.ndarray,
        experts: Sequence[str],
        *,
        config: GateConfig = GateConfig(kind="centroid"),
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=config.temperature, report=report)
        self.centroids = np.asarray(centroids, dtype=np.float32)  # (E, D)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``: ``softmax(cos(query, centroid) / temperature)``."""
        q = _normalise(self._queries(embeddings))  # (N, D)
        sims = (q @ self.centroids.T).astype(np.float64)  # (N, E)
        return _softmax(sims / self.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids}


class KNNGate(_SavedGate):
    """Cosine k-nearest exemplars: each of the ``k`` nearest adds ``exp(sim / temperature)`` to its expert.

    A small floor keeps every expert's probability above 0.

    Args:
        exemplars: unit vectors ``(M, D)``.
        labels: the expert index of each exemplar, ``(M,)``.
        experts: the expert names.
        config: its settings (``k`` and ``temperature`` are used).
        report: how it was fitted.
    """

    kind = "knn"

    def __init__(
        self,
        exemplars: np.ndarray,
        labels: np.ndarray,
        experts: Sequence[str],
        *,
        config: GateConfig = GateConfig(kind="knn"),
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=config.temperature, report=report)
        self.exemplars = np.asarray(exemplars, dtype=np.float32)  # (M, D)
        self.labels = np.asarray(labels, dtype=np.int64)  # (M,)
        if self.labels.shape != (len(self.exemplars),) or not np.all(
            (self.labels >= 0) & (self.labels < len(self.experts))
        ):
            raise ConfigError(f"knn gate: need {len(self.exemplars)} labels below {len(self.experts)}")

    @property
    def dim(self) -> int:
        return int(self.exemplars.shape[1])

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)`` from the votes of the ``k`` most similar exemplars."""
        q = _normalise(self._queries(embeddings))  # (N, D)
        n, k = len(q), min(self.config.k, len(self.exemplars))
        sims = (q @ self.exemplars.T).astype(np.float64)  # (N, M)
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (N, k)
        top = np.take_along_axis(sims, nearest, axis=1)  # (N, k)
        weight = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)  # (N, k), nearest = 1
        votes = np.full((n, len(self.experts)), _KNN_FLOOR)  # (N, E)
        np.add.at(votes, (np.arange(n)[:, None], self.labels[nearest]), weight)
        return votes / votes.sum(axis=1, keepdims=True)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"exemplars": self.exemplars, "labels": self.labels}


class GatingNetwork(_SavedGate):
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
        config: GateConfig = GateConfig(),
        temperature: float = 1.0,
        report: FitReport | None = None,
    ) -> None:
        super().__init__(experts, config=config, temperature=temperature, report=report)
        self.net = net.eval()

    @property
    def dim(self) -> int:
        return int(self.net.get_parameter("fc1.weight").shape[1])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """The network's raw outputs ``(N, E)``, before the temperature and the softmax."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self._queries(embeddings)))  # (N, D)
        with torch.inference_mode():
            return self.net(x).double().numpy()  # type: ignore[no-any-return]

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, E)``: ``softmax(logits / temperature)``."""
        return _softmax(self.logits(embeddings) / self.temperature)

    def _tensors(self) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy() for name, t in self.net.state_dict().items()}


def fit_gate(
    embeddings: np.ndarray,
    labels: Sequence[str],
    experts: Sequence[str],
    config: GateConfig = GateConfig(),
    *,
    progress: Progress | None = None,
) -> tuple[Gate, FitReport]:
    """Fits a gate of ``config.kind`` on exemplar embeddings. Blocks (seconds at most).

    Args:
        embeddings: exemplar embeddings ``(N, D)``, L2-normalised.
        labels: the expert of each exemplar.
        experts: every expert, in the gate's column order; each needs at least one exemplar.
        config: the kind of gate and its training settings.
        progress: called as ``progress(epoch, max_epochs)`` after each MLP epoch.

    Returns:
        The gate and how it was fitted (also ``gate.report``).

    Raises:
        ConfigError: fewer than two experts, a label that is not an expert, an expert without
            exemplars, or embeddings whose shape does not match the labels.
    """
    start = time.perf_counter()
    x, y = _check_fit_inputs(embeddings, labels, experts)
    names = tuple(experts)
    counts = np.bincount(y, minlength=len(names))
    gate: GatingNetwork | CentroidGate | KNNGate
    if config.kind == "mlp":
        gate, stats = _fit_mlp(x, y, names, config, progress)
    else:
        x = _normalise(x)
        if config.kind == "centroid":
            means = np.stack([x[y == e].mean(axis=0) for e in range(len(names))])  # (E, D)
            gate = CentroidGate(_normalise(means), names, config=config)
        else:
            gate = KNNGate(x, y, names, config=config)
        stats = {"train_size": len(x), "val_size": 0, "val_accuracy": None, "epochs": 0}
    report = FitReport(
        counts={name: int(c) for name, c in zip(names, counts, strict=True)},
        temperature=gate.temperature,
        seconds=time.perf_counter() - start,
        **stats,
    )
    gate.report = report
    return gate, report


def load_gate(path: str | Path, *, experts: Sequence[str] | None = None, encoder: str | None = None) -> Gate:
    """Loads a gate written by ``gate.save(path, ...)``.

    Args:
        path: the ``.safetensors`` file (its ``.json`` sidecar must sit next to it).
        experts: when given, the gate must have been fitted for exactly these experts (any order).
        encoder: when given, the gate must have been fitted on this encoder's embeddings.

    Raises:
        ConfigError: a file is missing or corrupt, not a gate of a format this version reads, or
            fitted for other experts (the message lists the missing and extra names) or another
            encoder.
    """
    path = Path(path)
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no gate metadata file {sidecar.name} next to {path.name}", path=sidecar) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read gate metadata: {exc}", path=sidecar) from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ConfigError(f"not a moe-agents gate (format is not {_FORMAT!r})", path=sidecar)
    if meta.get("version") != _VERSION:
        raise ConfigError(
            f"gate format version {meta.get('version')!r} is not supported (this version reads {_VERSION})",
            path=sidecar,
        )
    try:
        kind, names, dim = str(meta["kind"]), [str(n) for n in meta["experts"]], int(meta["dim"])
        loader = _LOADERS[kind]
        config = GateConfig(**meta["config"])
        temperature = float(meta["temperature"])
        report = None if meta["report"] is None else FitReport.from_dict(meta["report"])
        saved_encoder, fingerprint = meta["encoder"], meta["fingerprint"]
        if config.kind != kind:
            raise ValueError(f"kind {kind!r} but config.kind {config.kind!r}")
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature {temperature} is not a positive number")
    except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
        raise ConfigError(f"malformed gate metadata: {exc!r}", path=sidecar) from exc
    if experts is not None and set(experts) != set(names):
        missing, extra = sorted(set(experts) - set(names)), sorted(set(names) - set(experts))
        raise ConfigError(
            f"the gate was fitted for other experts: missing {missing}, extra {extra}", path=path
        )
    if encoder is not None and saved_encoder != encoder:
        raise ConfigError(f"the gate was fitted on {saved_encoder!r} embeddings, not {encoder!r}", path=path)
    tensors = _read_tensors(path)
    try:
        gate = loader(tensors, names, config, temperature, report)
    except (KeyError, ValueError, RuntimeError, IndexError) as exc:
        raise ConfigError(f"gate tensors do not match its metadata: {exc}", path=path) from exc
    if gate.dim != dim:
        raise ConfigError(f"gate tensors are {gate.dim}-d, its metadata says {dim}-d", path=path)
    gate.encoder, gate.fingerprint = saved_encoder, fingerprint
    return gate


def gate_fingerprint(encoder: str, exemplars: Mapping[str, Sequence[str]], config: GateConfig) -> str:
    """A sha256 hex digest of everything a fitted gate depends on, for caching fitted gates.

    It changes when the encoder, an expert, an exemplar (or their order within an expert), a
    config field or the gate format changes, and not when the experts are listed in another order.
    """
    payload = {
        "format": _FORMAT,
        "version": _VERSION,
        "encoder": encoder,
        "exemplars": [[name, list(exemplars[name])] for name in sorted(exemplars)],
        "config": asdict(config),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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


# --- MLP training -----------------------------------------------------------------------------------


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


def _fit_mlp(
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


# --- loading and helpers ----------------------------------------------------------------------------


def _load_centroid(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> CentroidGate:
    centroids = tensors["centroids"]
    if centroids.ndim != 2 or len(centroids) != len(experts):
        raise ValueError(f"centroids have shape {centroids.shape} for {len(experts)} experts")
    gate = CentroidGate(centroids, experts, config=config, report=report)
    gate.temperature = temperature
    return gate


def _load_knn(
    tensors: dict[str, np.ndarray],
    experts: list[str],
    config: GateConfig,
    temperature: float,
    report: FitReport | None,
) -> KNNGate:
    try:
        gate = KNNGate(tensors["exemplars"], tensors["labels"], experts, config=config, report=report)
    except ConfigError as exc:
        raise ValueError(exc.message) from exc
    if gate.exemplars.ndim != 2:
        raise ValueError(f"exemplars have shape {gate.exemplars.shape}")
    gate.temperature = temperature
    return gate


def _load_mlp(
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


_Loader = Callable[[dict[str, np.ndarray], list[str], GateConfig, float, "FitReport | None"], _SavedGate]
_LOADERS: dict[str, _Loader] = {"mlp": _load_mlp, "centroid": _load_centroid, "knn": _load_knn}


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("gate tensor file is missing", path=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read gate tensors: {exc}", path=path) from exc
    try:
        return load(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise ConfigError(f"corrupt gate tensor file: {exc}", path=path) from exc


def _check_fit_inputs(
    embeddings: np.ndarray, labels: Sequence[str], experts: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    names = list(experts)
    if len(names) < 2:
        raise ConfigError(f"a gate needs at least two experts, got {names}")
    if len(set(names)) != len(names):
        raise ConfigError(f"expert names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(labels):
        raise ConfigError(f"embeddings must have shape ({len(labels)}, D) to match the labels, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError("embeddings contain NaN or infinite values")
    column = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(label) for label in labels if label not in column})
    if unknown:
        raise ConfigError(f"labels {unknown} are not experts (experts: {names})")
    y = np.array([column[label] for label in labels], dtype=np.int64)
    empty = [name for name, c in zip(names, np.bincount(y, minlength=len(names)), strict=True) if c == 0]
    if empty:
        raise ConfigError(f"experts {empty} have no exemplars; a gate needs at least one per expert")
    return x, y


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    s = z / temperature
    s = s - s.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(log_norm - s[np.arange(len(y)), y]))


def _write_atomic(path: Path, data: bytes) -> None:
    """Writes via a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
