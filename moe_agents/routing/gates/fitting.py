"""Fitting, saving and loading gates of every kind.

Four kinds, fitted by ``fit_gate`` on L2-normalised float32 embeddings ``(N, D)``:

- ``mlp`` (``GatingNetwork``, in ``gates.mlp``): a small MLP trained with class balancing and early
  stopping on a stratified validation split, then temperature-calibrated on that split (torch is
  imported on first fit or load only);
- ``centroid`` (``CentroidGate``): softmax over cosine similarities to each expert's exemplar centroid;
- ``knn`` (``KNNGate``): the k most similar exemplars vote ``exp(similarity / temperature)``;
- ``ensemble`` (``EnsembleGate``): the mean of the three above.

A fitted gate comes back from its files with ``load_gate``; ``gate_fingerprint`` keys caches of
fitted gates.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from .base import FORMAT, VERSION, FitReport, Gate, GateConfig, Progress, SavedGate, normalise
from .ensemble import MEMBERS, EnsembleGate, load_ensemble
from .mlp import fit_mlp, load_mlp
from .similarity import CentroidGate, KNNGate, load_centroid, load_knn

__all__ = ["fit_gate", "gate_fingerprint", "load_gate"]


def fit_gate(
    embeddings: np.ndarray,
    labels: Sequence[str],
    experts: Sequence[str],
    config: GateConfig = GateConfig(),  # noqa: B008 -- frozen, so sharing the default is safe
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
    gate: SavedGate
    if config.kind == "ensemble":
        members = [fit_gate(x, labels, names, replace(config, kind=k), progress=progress)[0] for k in MEMBERS]
        gate = EnsembleGate([m for m in members if isinstance(m, SavedGate)], config=config)
        mlp = members[0].report  # the trained member: its split and epochs
        stats = {k: getattr(mlp, k) for k in ("train_size", "val_size", "val_accuracy", "epochs")}
    elif config.kind == "mlp":
        gate, stats = fit_mlp(x, y, names, config, progress)
    else:
        x = normalise(x)
        if config.kind == "centroid":
            means = np.stack([x[y == e].mean(axis=0) for e in range(len(names))])  # (E, D)
            gate = CentroidGate(normalise(means), names, config=config)
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"not a moe-agents gate (format is not {FORMAT!r})", path=sidecar)
    if meta.get("version") != VERSION:
        raise ConfigError(
            f"gate format version {meta.get('version')!r} is not supported (this version reads {VERSION})",
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
    gate.encoder, gate.fingerprint, gate.path = saved_encoder, fingerprint, path
    return gate


def gate_fingerprint(
    encoder: str,
    exemplars: Mapping[str, Sequence[str]],
    config: GateConfig,
    *,
    selection: Mapping[str, Any] | None = None,
) -> str:
    """A sha256 hex digest of everything a fitted gate depends on, for caching fitted gates.

    It changes when the encoder, an expert, an exemplar (or their order within an expert), a
    config field, ``selection`` (how the encoder and mixing are chosen: tuning and
    cross-validation settings) or the gate format changes, and not when the experts are listed in
    another order.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": encoder,
        "exemplars": [[name, list(exemplars[name])] for name in sorted(exemplars)],
        "config": asdict(config),
    }
    if selection is not None:
        payload["selection"] = dict(selection)
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- loading and helpers ----------------------------------------------------------------------------


_Loader = Callable[[dict[str, np.ndarray], list[str], GateConfig, float, "FitReport | None"], SavedGate]
_LOADERS: dict[str, _Loader] = {
    "centroid": load_centroid,
    "knn": load_knn,
    "mlp": load_mlp,
    "ensemble": load_ensemble,
}


def _loader(kind: str) -> _Loader:
    """The loader for ``kind`` (``KeyError`` if unknown)."""
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
