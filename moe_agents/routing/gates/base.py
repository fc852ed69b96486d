"""What every gate kind shares: its configuration, fit report, protocol and on-disk format.

A gate maps a query's embedding to a probability per expert. ``predict_proba`` returns float64
``(N, E)`` rows that sum to 1, columns in ``gate.experts`` order; it blocks, so async callers run it
in a worker thread. A gate saves to ``<path>.safetensors`` plus a JSON sidecar ``<path>.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np

from ...errors import ConfigError, InvalidInput

__all__ = [
    "FORMAT",
    "GATE_KINDS",
    "VERSION",
    "FitReport",
    "Gate",
    "GateConfig",
    "Progress",
    "SavedGate",
    "normalise",
    "softmax",
    "temper",
]

GATE_KINDS = ("mlp", "centroid", "knn", "ensemble")
FORMAT = "moe-agents-gate"
VERSION = 1

Progress = Callable[[int, int], None]
"""Called as ``progress(epoch, max_epochs)`` while a gate trains."""


@dataclass(frozen=True, slots=True)
class GateConfig:
    """How a gate is built and trained (the YAML ``router.gate:`` section).

    Attributes:
        kind: ``mlp`` (a trained network), ``centroid`` or ``knn`` (no training), or ``ensemble``
            (the mean of all three).
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

    kind: Literal["mlp", "centroid", "knn", "ensemble"] = "mlp"
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
        if self.kind not in GATE_KINDS:
            raise ConfigError(f"gate.kind must be one of {', '.join(GATE_KINDS)}; got {self.kind!r}")
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
        cv: what cross-validation on the exemplars chose and every candidate's score (``CVChoice.to_dict``),
            plus the encoder it chose; ``None`` when nothing was cross-validated.
    """

    counts: Mapping[str, int]
    train_size: int
    val_size: int
    val_accuracy: float | None
    epochs: int
    temperature: float
    seconds: float
    cv: Mapping[str, Any] | None = None

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


class SavedGate:
    """What every gate kind shares: identity, metadata and the on-disk format."""

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
        self.path: Path | None = None
        """The file it was loaded from (``None`` for a gate fitted in this process)."""

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
            "format": FORMAT,
            "version": VERSION,
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
        write_atomic(path, to_bytes(self._tensors(), metadata={"format": FORMAT}))
        write_atomic(path.with_suffix(".json"), json.dumps(meta, indent=2).encode())
        self.encoder, self.fingerprint = encoder, fingerprint

    def __repr__(self) -> str:
        return f"{type(self).__name__}(experts={list(self.experts)}, T={self.temperature:.3g})"


def normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


def temper(probs: np.ndarray, scale: float) -> np.ndarray:
    """``probs`` with their temperature multiplied by ``scale``: ``softmax(log p / scale)``."""
    if scale == 1.0:
        return probs
    z = np.log(np.clip(probs, 1e-12, 1.0)) / scale
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def write_atomic(path: Path, data: bytes) -> None:
    """Writes via a temporary file and a rename, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
