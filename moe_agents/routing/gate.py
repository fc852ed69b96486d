"""Gates: from a query's embedding to a probability per expert, learned from the experts' exemplars.

Three kinds, fitted by ``fit_gate`` on L2-normalised float32 embeddings ``(N, D)``:

- ``mlp`` (``GatingNetwork``, in ``moe_agents.routing.mlp``): a small MLP trained with class
  balancing and early stopping on a stratified validation split, then temperature-calibrated on that
  split;
- ``centroid`` (``CentroidGate``): softmax over cosine similarities to each expert's exemplar centroid;
- ``knn`` (``KNNGate``): the k most similar exemplars vote ``exp(similarity / temperature)``.

``predict_proba`` returns float64 ``(N, E)`` rows that sum to 1, columns in ``gate.experts`` order.
It blocks; async callers run it in a worker thread. A gate saves to ``<path>.safetensors`` plus a
JSON sidecar ``<path>.json`` and comes back with ``load_gate``. This module holds what every kind
shares (config, report, protocol, on-disk format) and the two training-free kinds; the MLP module
and torch are imported on first use only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, InvalidInput

__all__ = [
    "CentroidGate",
    "FitReport",
    "Gate",
    "GateConfig",
    "KNNGate",
    "fit_gate",
    "gate_fingerprint",
    "load_gate",
]

_FORMAT = "moe-agents-gate"
_VERSION = 1
_KNN_FLOOR = 1e-6  # every expert keeps at least this vote (relative to the nearest neighbour's)

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
    gate: _SavedGate
    if config.kind == "mlp":
        from .mlp import _fit_mlp

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
        loader = _loader(kind)
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


_Loader = Callable[[dict[str, np.ndarray], list[str], GateConfig, float, "FitReport | None"], _SavedGate]
_LOADERS: dict[str, _Loader] = {"centroid": _load_centroid, "knn": _load_knn}


def _loader(kind: str) -> _Loader:
    """The loader for ``kind`` (``KeyError`` if unknown); the MLP module is imported only for ``mlp``."""
    if kind == "mlp":
        from .mlp import _load_mlp

        return _load_mlp
    return _LOADERS[kind]


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
