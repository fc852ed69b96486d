"""Few-shot adaptation of the sentence encoder to the experts' exemplars (the SetFit recipe).

``tune_encoder`` fine-tunes a transformers encoder (mean pooling, as ``SentenceEncoder`` uses it)
with a supervised contrastive loss over in-batch pairs: in every batch of exemplars, each one is
pulled towards the other exemplars of its expert and pushed away from the rest (SupCon, the
multi-positive form of in-batch negatives ranking). A few epochs over a few hundred exemplars take
seconds to a minute on a CPU. The result is a plain HF model folder (``config.json``,
``model.safetensors``, tokenizer files, ``tuning.json``), so anything that loads an HF folder
(``SentenceEncoder``, an ONNX export) can load it.

``tuned_encoder_folder`` keys tuned folders by ``tuning_fingerprint`` (base encoder, exemplars,
settings), so an exemplar set is tuned once and reused afterwards. Training is seeded: the same
inputs, settings and thread count give the same weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np

from ..bounds import Ge, Gt, check_bounds
from ..errors import ConfigError
from ..logging import get_logger
from .gates import Gate, load_gate

__all__ = [
    "FITTED_GATE",
    "TUNED_MARKER",
    "TuningConfig",
    "find_fitted",
    "save_fitted",
    "tune_encoder",
    "tuned_embeddings",
    "tuned_encoder_folder",
    "tuned_name",
    "tuning_fingerprint",
]

log = get_logger(__name__)

TUNED_MARKER = "tuning.json"
"""The file in a tuned folder that records its base encoder, fingerprint and training history."""

FITTED_GATE = "gate.safetensors"
"""The gate's file in a folder written by ``save_fitted`` (``moe-agents fit --out DIR``)."""

_FORMAT_VERSION = 1

Progress = Callable[[int, int], None]
"""Called as ``progress(step, total_steps)`` while the encoder trains."""


@dataclass(frozen=True, slots=True)
class TuningConfig:
    """How the encoder is fine-tuned on the exemplars (the YAML ``router.tuning:`` section).

    Attributes:
        epochs: passes over the exemplars.
        batch_size: exemplars per step; each one's positives and negatives are the others in its batch.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        temperature: of the contrastive softmax over cosine similarities.
        max_length: tokens per exemplar while training (longer ones are truncated).
        train_layers: only the top ``train_layers`` transformer layers are trained (the embeddings
            and the layers below stay frozen, so backward passes are short); 0 trains every layer.
        seed: seeds the batch order and the dropout masks.
    """

    epochs: Annotated[int, Ge(1)] = 3
    batch_size: Annotated[int, Ge(2)] = 32
    lr: Annotated[float, Gt(0.0)] = 2e-5
    weight_decay: Annotated[float, Ge(0.0)] = 0.01
    temperature: Annotated[float, Gt(0.0)] = 0.05
    max_length: Annotated[int, Ge(8)] = 64
    train_layers: Annotated[int, Ge(0)] = 2
    seed: Annotated[int, Ge(0)] = 0

    def __post_init__(self) -> None:
        check_bounds("router.tuning", self)


def tuning_fingerprint(base: str, exemplars: Mapping[str, Sequence[str]], config: TuningConfig) -> str:
    """A sha256 hex digest of what a tuned encoder depends on: the base encoder's name, every
    expert's exemplars (in order; experts in any order) and the settings."""
    payload = {
        "version": _FORMAT_VERSION,
        "base": base,
        "exemplars": [[name, list(exemplars[name])] for name in sorted(exemplars)],
        "config": asdict(config),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tuned_name(base: str, fingerprint: str) -> str:
    """The folder (and encoder) name of a tuned encoder: ``<base folder>-tuned-<fingerprint[:16]>``."""
    stem = "".join(c if c.isalnum() or c in "-." else "_" for c in base.removeprefix("pkg:"))
    stem = stem.strip("_.")[-48:] or "encoder"
    return f"{stem}-tuned-{fingerprint[:16]}"


def tuned_encoder_folder(
    base_path: str | Path,
    base_name: str,
    exemplars: Mapping[str, Sequence[str]],
    config: TuningConfig,
    cache_dir: Path | None,
    *,
    progress: Progress | None = None,
    force: bool = False,
) -> Path:
    """The folder of the encoder tuned on ``exemplars``: taken from ``cache_dir`` when it is there
    (and ``force`` is false), else tuned now and written there. Blocks.

    Args:
        base_path: the base encoder's HF folder (or ``pkg:<package>/<subpath>``).
        base_name: the base encoder's name (part of the fingerprint).
        exemplars: texts per expert.
        config: the tuning settings.
        cache_dir: where tuned folders live; ``None``: a fresh temporary folder (no reuse).
        progress: called as ``progress(step, total)`` while training.
        force: tune again even if the folder is cached.

    Raises:
        ConfigError: fewer than two experts with exemplars, or the base encoder cannot be loaded.
    """
    fingerprint = tuning_fingerprint(base_name, exemplars, config)
    name = tuned_name(base_name, fingerprint)
    parent = cache_dir if cache_dir is not None else Path(tempfile.mkdtemp(prefix="moe-agents-tuned-"))
    folder = parent / name
    if not force and _is_complete(folder, fingerprint):
        log.info("encoder.tuned_loaded", path=str(folder))
        return folder
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}."))
    try:
        history = tune_encoder(base_path, exemplars, config, staging, progress=progress)
        meta = {"base": base_name, "fingerprint": fingerprint, "config": asdict(config), **history}
        (staging / TUNED_MARKER).write_text(json.dumps(meta, indent=2), "utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("encoder.tuned", path=str(folder), s=history["seconds"])
    return folder


def _is_complete(folder: Path, fingerprint: str) -> bool:
    try:
        meta = json.loads((folder / TUNED_MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("fingerprint") == fingerprint


def tune_encoder(
    base_path: str | Path,
    exemplars: Mapping[str, Sequence[str]],
    config: TuningConfig,
    out: str | Path,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tunes the encoder at ``base_path`` on ``exemplars`` and saves it as an HF folder at
    ``out`` (created). Blocks; CPU.

    Returns:
        ``{"seconds", "steps", "losses"}``: wall time, optimiser steps and the mean loss per epoch.

    Raises:
        ConfigError: fewer than two experts have exemplars, or the base cannot be loaded.
    """
    texts = [t for ts in exemplars.values() for t in ts]
    labels = np.array([i for i, ts in enumerate(exemplars.values()) for _ in ts], dtype=np.int64)
    model, tokenizer, history = _train(base_path, texts, labels, config, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return history


def tuned_embeddings(
    base_path: str | Path,
    texts: Sequence[str],
    labels: np.ndarray,
    train: np.ndarray,
    config: TuningConfig,
    *,
    progress: Progress | None = None,
) -> np.ndarray:
    """Tunes a copy of the base encoder on ``texts[train]`` (in memory) and returns the embeddings
    of every text ``(N, D)``, for cross-validation: held-out texts were never trained on. Blocks."""
    from .encoder import mean_pooled

    idx = np.flatnonzero(train)
    model, tokenizer, _ = _train(base_path, [texts[int(i)] for i in idx], labels[idx], config, progress)
    longest = min(256, int(getattr(model.config, "max_position_embeddings", 256)))  # as SentenceEncoder
    return mean_pooled(model, tokenizer, texts, batch_size=64, max_length=longest)


def _train(
    base_path: str | Path,
    texts: Sequence[str],
    labels: np.ndarray,
    config: TuningConfig,
    progress: Progress | None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Loads the base encoder and trains it with ``supcon_loss``; returns it in eval mode."""
    import torch

    from .encoder import _mean_pool, load_transformers_encoder

    if len({int(i) for i in labels}) < 2:
        raise ConfigError("encoder tuning needs exemplars of at least two experts")
    start = time.perf_counter()
    model, tokenizer = load_transformers_encoder(base_path)
    _freeze_below(model, config.train_layers)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    batches = [_batches(labels, config.batch_size, rng) for _ in range(config.epochs)]
    total = sum(map(len, batches))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 1.0 - s / max(total, 1))
    model.train()
    losses: list[float] = []
    step = 0
    for epoch in batches:
        running = 0.0
        for idx in epoch:
            batch = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            )
            z = _mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])  # (B, D)
            loss = supcon_loss(z, torch.from_numpy(labels[idx]), config.temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            running += loss.detach().item()
            step += 1
            if progress is not None:
                progress(step, total)
        losses.append(round(running / max(len(epoch), 1), 5))
    model.eval()
    return (
        model,
        tokenizer,
        {"seconds": round(time.perf_counter() - start, 3), "steps": total, "losses": losses},
    )


def supcon_loss(z: Any, labels: Any, temperature: float) -> Any:
    """Supervised contrastive loss of unit embeddings ``z`` ``(B, D)`` with ``labels`` ``(B,)``: each
    row's log-softmax over the others, averaged over the rows of its own label. Rows without a
    positive in the batch only serve as negatives."""
    import torch

    eye = torch.eye(len(z), dtype=torch.bool)
    sims = (z @ z.T / temperature).masked_fill(eye, float("-inf"))  # (B, B)
    log_p = sims - torch.logsumexp(sims, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    has = positive.any(dim=1)
    per_row = -(log_p.masked_fill(~positive, 0.0)).sum(1) / positive.sum(1).clamp(min=1)
    return per_row[has].mean() if bool(has.any()) else per_row.sum() * 0.0


def _batches(labels: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch's batches: a seeded shuffle, cut into ``size`` pieces (the last may be smaller;
    a last piece of one is merged into the one before, since it has no pair)."""
    order = rng.permutation(len(labels))
    out = [order[i : i + size] for i in range(0, len(order), size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


def _freeze_below(model: Any, train_layers: int) -> None:
    """Freezes everything but the top ``train_layers`` encoder layers (and any pooler)."""
    if train_layers == 0:
        return
    layers = _layers(model)
    if layers is None:
        raise ConfigError(
            f"router.tuning.train_layers: cannot find the transformer layers of {type(model).__name__}; "
            "use train_layers: 0 (train every layer)"
        )
    if train_layers > len(layers):
        raise ConfigError(
            f"router.tuning.train_layers is {train_layers}, but the encoder has {len(layers)} layers"
        )
    keep = {id(p) for layer in list(layers)[-train_layers:] for p in layer.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def _layers(model: Any) -> Any:
    """The model's stack of transformer layers (BERT-like ``encoder.layer``, DistilBERT-like
    ``transformer.layer``), or ``None``."""
    for path in (("encoder", "layer"), ("transformer", "layer"), ("layers",)):
        obj = model
        for part in path:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    return None


def save_fitted(gate: Gate, out: str | Path, *, encoder: str, tuned: Path | None) -> Path:
    """Saves a fitted gate, and the tuned encoder folder it was fitted on, for ``router.gate_path``.

    Args:
        gate: the fitted gate.
        out: a folder (the gate goes to ``out/gate.safetensors``) or a ``.safetensors`` file; the
            tuned encoder folder is copied next to the gate's file, under its own name.
        encoder: the name of the encoder the gate was fitted on.
        tuned: the tuned encoder's folder (``None`` when the gate was fitted on the base encoder).

    Returns:
        The gate's file.
    """
    out = Path(out)
    path = out if out.suffix == ".safetensors" else out / FITTED_GATE
    gate.save(path, encoder=encoder, fingerprint=gate.fingerprint)
    if tuned is not None:
        target = path.parent / tuned.name
        if target.resolve() != tuned.resolve():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(tuned, target)
    return path


def find_fitted(path: str | Path, base: str) -> Gate:
    """Loads a gate saved by ``save_fitted`` (``path``: its folder or file), checking that it was
    fitted on the encoder ``base`` or on a tuned encoder saved beside it whose base is ``base``.

    Raises:
        ConfigError: the gate cannot be read, or was fitted on another encoder, or its tuned
            encoder folder is missing.
    """
    path = Path(path)
    file = path / FITTED_GATE if path.is_dir() else path
    gate = load_gate(file)
    if gate.encoder in (None, base):
        return gate
    folder = file.parent / str(gate.encoder)
    try:
        meta = json.loads((folder / TUNED_MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        raise ConfigError(
            f"the gate was fitted on {gate.encoder!r} embeddings, not {base!r}, and no tuned encoder "
            f"folder {folder.name} is next to it",
            path=file,
        ) from None
    if meta.get("base") != base:
        raise ConfigError(
            f"the gate's tuned encoder {folder.name} was tuned from {meta.get('base')!r}, not {base!r}",
            path=file,
        )
    return gate
