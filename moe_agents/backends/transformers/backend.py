"""``TransformersBackend``: a local model behind the ``Backend`` seam, composing loading and generation.

It validates its settings, resolves its folders, makes adapted copies (``with_adapter``), loads and
unloads the model in a worker thread (``loading``), checks a call's attachments against what the
model accepts, and hands the call to a worker thread (``generation``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from ...errors import BackendError, ConfigError, MoEError
from ...lazy import quiet_loading
from ...logging import get_logger
from ...resources import resolve_path
from ...types import Message, Usage
from ..base import ChunkCallback, Completion, GenerationSettings
from ..gguf_cache import entry_path
from .generation import Request, generate
from .loading import PROCESSOR_FILES, Loaded, LoadSpec, config_modalities, free_memory, load_model
from .prompt import chat_turns

__all__ = ["TransformersBackend"]

log = get_logger(__name__)

_DTYPES = frozenset({"auto", "float32", "float16", "bfloat16"})


class TransformersBackend:
    """A causal LM from a local folder (``pkg:<package>[/<subpath>]`` for one inside a Python package).

    Messages are rendered with the tokenizer's chat template. Control tokens that appear inside
    message text (``<|im_end|>``) are encoded as plain text, so a message cannot forge a turn.

    Args:
        model: the model folder, or a ``pkg:`` spec resolved with ``resources.resolve_path``.
        gguf_file: the GGUF file inside that folder, when the weights are GGUF.
        name: shown in logs and errors; defaults to ``transformers:<gguf file or folder name>``.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``, ``mps``).
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``; ``None`` keeps transformers' default.
        max_new_tokens: default cap on generated tokens.
        temperature: default temperature; 0 decodes greedily.
        max_concurrency: how many generations may run on the model at once.
        modalities: attachment kinds it accepts besides text. ``None`` reads them from the folder's
            ``config.json`` when it also has a processor: ``image`` for a vision config, ``audio`` for
            an audio config (also inside a ``thinker_config``).
        adapter: a peft LoRA adapter folder (or ``pkg:`` spec) applied on top of the model.
        merge_adapter: fold the adapter into the base weights at load (faster generation, same output).

    A GGUF file is converted to a dense model by transformers (tens of seconds, even for a small
    model) once: the model and tokenizer are cached as safetensors (see ``gguf_cache``), keyed by the
    file's content, the transformers version and ``dtype``, and later loads read the cache. A cache
    entry that does not load is logged (``backend.gguf_cache_invalid``), removed and rebuilt.

    Images reach the model as ``image_url`` parts holding a base64 ``data:`` URL, audio as
    ``input_audio`` parts holding base64 PCM WAV (8, 16, 24 or 32 bit; the shapes ``OmniExpert``
    builds); both need a model folder with a processor. Audio is mixed down to mono and resampled
    to the feature extractor's ``sampling_rate``; the processor pads or cuts it to its own window
    (30 s for Whisper-style extractors).

    Raises:
        ConfigError: an argument is out of range.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        gguf_file: str | None = None,
        name: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        max_concurrency: int = 1,
        modalities: Sequence[str] | None = None,
        adapter: str | Path | None = None,
        merge_adapter: bool = False,
    ) -> None:
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if adapter is not None and not str(adapter).strip():
            raise ConfigError("adapter must be a non-empty path")
        if merge_adapter and adapter is None:
            raise ConfigError("merge_adapter needs an adapter")
        self.model = str(model)
        self.gguf_file = gguf_file
        folder = self.model.removeprefix("pkg:").rstrip("/\\")
        self.name = name or f"transformers:{gguf_file or Path(folder).name}"
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.adapter = None if adapter is None else str(adapter)
        self.merge_adapter = merge_adapter
        self._modalities = None if modalities is None else frozenset(modalities)
        self._lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._state: Loaded | None = None
        self._nbytes = 0
        self._adapted: dict[tuple[str, bool], TransformersBackend] = {}
        self._gguf_entry: tuple[tuple[int, int, int], Path] | None = None  # (file stamp, cache entry)

    def __repr__(self) -> str:
        gguf = f", gguf_file={self.gguf_file!r}" if self.gguf_file else ""
        adapter = f", adapter={self.adapter!r}" if self.adapter else ""
        return f"TransformersBackend(model={self.model!r}{gguf}{adapter}, device={self.device!r})"

    def with_adapter(self, adapter: str | Path, *, merge: bool = False) -> TransformersBackend:
        """A copy of this backend that applies the LoRA ``adapter`` on top of the same base model.

        The copy is a backend of its own, named ``<name>+<adapter folder name>``: it loads the base
        weights again, with the adapter (folded into them with ``merge``), and keeps every other
        setting of this one. Asking again for the same adapter and ``merge`` returns the same copy,
        so experts that share this backend share its adapted copy (and its one load). Nothing is
        loaded here.

        Args:
            adapter: a peft LoRA adapter folder (or ``pkg:`` spec).
            merge: fold the adapter into the base weights at load (``merge_adapter``).

        Raises:
            ConfigError: this backend has an adapter already, or ``adapter`` is blank.
        """
        if self.adapter is not None:
            raise ConfigError(f"{self.name}: has adapter {self.adapter!r} already; adapters do not stack")
        key = (str(adapter), merge)
        if key not in self._adapted:
            folder = Path(str(adapter).removeprefix("pkg:").rstrip("/\\")).name
            self._adapted[key] = TransformersBackend(
                self.model,
                gguf_file=self.gguf_file,
                name=f"{self.name}+{folder}",
                device=self.device,
                dtype=self.dtype,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                max_concurrency=int(self._limiter.total_tokens),
                modalities=None if self._modalities is None else sorted(self._modalities),
                adapter=adapter,
                merge_adapter=merge,
            )
        return self._adapted[key]

    @property
    def modalities(self) -> frozenset[str]:
        """Attachment kinds it accepts besides text: the constructor's, or else read once from the
        folder's ``config.json`` (empty without a processor, a config, or the folder)."""
        if self._modalities is None:
            self._modalities = config_modalities(self.model, self.gguf_file)
        return self._modalities

    @modalities.setter
    def modalities(self, value: frozenset[str]) -> None:
        self._modalities = frozenset(value)

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self._state is not None

    @property
    def nbytes(self) -> int:
        """Bytes the parameters and buffers took at the last load (0 before the first load)."""
        return self._nbytes

    def needs_preparation(self) -> bool:
        """Whether the next load converts a GGUF file, a one-time step of tens of seconds: ``True``
        until the conversion cache holds this file (in this ``dtype``); ``False`` for a model folder,
        once loaded, or when the file or transformers is missing (loading reports that).

        Hashes the GGUF file the first time (about 0.2 s per 100 MB).
        """
        if self.gguf_file is None or self._state is not None:
            return False
        try:
            return not self._cache_entry(self._resolve() / self.gguf_file).is_dir()
        except (MoEError, OSError, ImportError):
            return False

    def disk_bytes(self) -> int:
        """Bytes of the weight files on disk (the GGUF file, or the folder's ``*.safetensors`` /
        ``*.bin``, plus the adapter's): a size estimate before the first load. GGUF weights are
        dequantised on load, so ``nbytes`` is then larger."""
        path = self._resolve()
        adapter = self._resolve_adapter()
        files = [] if adapter is None else [*adapter.glob("*.safetensors"), *adapter.glob("*.bin")]
        if self.gguf_file is not None:
            return (path / self.gguf_file).stat().st_size + sum(f.stat().st_size for f in files)
        files += [*path.glob("*.safetensors"), *path.glob("*.bin")]
        return sum(f.stat().st_size for f in files)

    async def load(self) -> None:
        """Loads the tokenizer (or processor), the model and its adapter in a worker thread; does
        nothing when already loaded.

        Raises:
            ConfigError: the model folder, GGUF file or adapter folder does not exist, an adapter is
                configured and peft is not installed, or the processor needs a package that is not
                installed (torchvision for Qwen3-Omni's).
            BackendError: transformers or peft could not load it.
        """
        async with self._lock:
            if self._state is not None:
                return
            path = self._resolve()
            adapter = self._resolve_adapter()
            spec = LoadSpec(
                name=self.name,
                path=path,
                adapter=adapter,
                gguf_file=self.gguf_file,
                device=self.device,
                dtype=self.dtype,
                merge_adapter=self.merge_adapter,
            )
            started = time.perf_counter()
            try:
                with quiet_loading(converts_gguf=self.needs_preparation()):
                    state = await anyio.to_thread.run_sync(load_model, spec, self._cache_entry)
            except MoEError:
                raise
            except Exception as exc:
                raise BackendError(f"{self.name}: could not load {path}: {exc}", backend=self.name) from exc
            self._nbytes = state.nbytes
            self._state = state
            log.debug(
                "backend.loaded",
                backend=self.name,
                nbytes=self._nbytes,
                adapter=self.adapter,
                processor=state.processor is not None,
                s=round(time.perf_counter() - started, 3),
            )

    async def unload(self) -> None:
        """Drops the model and tokenizer and frees their memory; does nothing when not loaded.

        Generations already running keep their reference until they finish.
        """
        async with self._lock:
            if self._state is None:
                return
            self._state = None
            await anyio.to_thread.run_sync(free_memory)
            log.debug("backend.unloaded", backend=self.name)

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        """Generates a reply to ``messages``, loading the model first if needed.

        The reply ends at the first of ``settings.stop`` (which is not included). With ``on_chunk``
        the text is streamed as it is decoded; the chunks join to the returned text.

        Raises:
            BackendError: the messages could not be rendered (an image or audio part for a model
                without a processor, or of a kind it does not accept) or generation failed.
        """
        request = self._request(messages, settings)
        state = self._state
        if state is None:
            await self.load()
            state = self._state
        if state is None:
            raise BackendError(f"{self.name}: unloaded while a call was starting", backend=self.name)
        self._check_media(state, request)
        generated, text, stopped = await generate(
            state, request, on_chunk, limiter=self._limiter, name=self.name
        )
        hit_limit = len(generated.ids) >= request.max_new_tokens and not (stopped or generated.eos)
        completion = Completion(
            text=text,
            model=self.name,
            usage=Usage(generated.prompt_tokens, len(generated.ids), 0.0),
            finish_reason="length" if hit_limit else "stop",
        )
        log.debug(
            "backend.completed",
            backend=self.name,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            streamed=on_chunk is not None,
        )
        return completion

    def _request(self, messages: Sequence[Message], settings: GenerationSettings | None) -> Request:
        s = settings or GenerationSettings()
        temperature = self.temperature if s.temperature is None else s.temperature
        return Request(
            chat=chat_turns(messages, self.name),
            max_new_tokens=s.max_tokens or self.max_new_tokens,
            temperature=temperature,
            top_p=s.top_p,
            stop=tuple(x for x in s.stop or () if x),
        )

    def _check_media(self, state: Loaded, request: Request) -> None:
        parts = [p for t in request.chat if isinstance(t["content"], list) for p in t["content"]]
        media = sorted({p["type"] for p in parts} - {"text"})
        if not media:
            return
        what = " or ".join(f"{k}s" if k == "image" else k for k in media)
        if state.processor is None:
            raise BackendError(
                f"model {self.name} has no processor for {what}; use a model folder with a processor "
                f"({' or '.join(PROCESSOR_FILES)}) or send text only",
                backend=self.name,
            )
        refused = [k for k in media if k not in self.modalities]
        if refused:
            raise BackendError(
                f"model {self.name} does not accept {' or '.join(refused)} "
                f"(modalities: {sorted(self.modalities) or 'text only'})",
                backend=self.name,
            )

    def _resolve_adapter(self) -> Path | None:
        if self.adapter is None:
            return None
        path = resolve_path(self.adapter)
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(
                f"{self.name}: adapter folder {path} does not exist or has no adapter_config.json", path=path
            )
        return path

    def _resolve(self) -> Path:
        path = resolve_path(self.model)
        if not path.is_dir():
            raise ConfigError(f"{self.name}: model folder {path} does not exist", path=path)
        if self.gguf_file is not None and not (path / self.gguf_file).is_file():
            raise ConfigError(f"{self.name}: GGUF file {path / self.gguf_file} does not exist", path=path)
        return path

    def _cache_entry(self, gguf: Path) -> Path:
        """The conversion cache's entry for ``gguf``; hashed once while the file's size, mtime and
        inode stay the same."""
        st = gguf.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._gguf_entry is None or self._gguf_entry[0] != stamp:
            self._gguf_entry = (stamp, entry_path(gguf, self.dtype))
        return self._gguf_entry[1]
