"""A local causal language model run with Hugging Face transformers (safetensors or GGUF).

torch, transformers and peft are imported on first use. Loading, tokenising and generating block,
so they run in worker threads; ``max_concurrency`` bounds how many generations share the model at
once. One instance is meant to be shared by every expert that uses the model.

A LoRA adapter (a peft folder) can be applied on top of the base weights (``with_adapter`` makes an
adapted copy of a backend). A model folder with a processor (``processor_config.json`` or
``preprocessor_config.json``) is loaded with ``AutoModelForMultimodalLM``: image and audio message
parts go through the processor. Images are tested with LLaVA, audio with Qwen2-Audio (a Whisper
feature extractor); any model whose processor takes ``{"type": "audio", "audio": <array>}`` chat
parts should work. Of a thinker/talker model (Qwen3-Omni-MoE) only the thinker is kept, so replies
are text; its processor needs torchvision (for its video processor), else loading is a ``ConfigError``.

A GGUF file is converted to a dense model once: the result is cached (``gguf_cache``) and later loads,
in any process, read the cache. ``needs_preparation()`` says whether the next load converts.
"""

from __future__ import annotations

import base64
import binascii
import gc
import io
import json
import sys
import threading
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread

from ..errors import BackendError, ConfigError, MoEError
from ..lazy import quiet_loading, transformers_names
from ..logging import get_logger
from ..resources import resolve_path
from ..types import Message, Usage
from .base import ChunkCallback, Completion, GenerationSettings
from .gguf_cache import entry_path, remove_entry, write_entry

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersBackend"]

log = get_logger(__name__)

_DTYPES = frozenset({"auto", "float32", "float16", "bfloat16"})
_END = object()
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_PEFT_HINT = "install peft with `pip install 'moe-agents[peft]'`"


@dataclass(frozen=True, slots=True)
class _Loaded:
    model: Any
    tokenizer: Any
    nbytes: int
    processor: Any = None
    encode_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class _Request:
    chat: list[dict[str, Any]]
    max_new_tokens: int
    temperature: float
    top_p: float | None
    stop: tuple[str, ...]


@dataclass(slots=True)
class _Generated:
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    eos: bool = False
    error: Exception | None = None


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
        self._state: _Loaded | None = None
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
            self._modalities = self._config_modalities()
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
            started = time.perf_counter()
            try:
                with quiet_loading():
                    state = await anyio.to_thread.run_sync(self._load_sync, path, adapter)
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
            await anyio.to_thread.run_sync(_free_memory)
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
        generated, text, stopped = await self._run(state, request, on_chunk)
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

    async def _run(
        self, state: _Loaded, request: _Request, on_chunk: ChunkCallback | None
    ) -> tuple[_Generated, str, bool]:
        """Generates in a worker thread while this task waits (or relays the stream); if this task
        is cancelled or ``on_chunk`` raises, the thread is told to stop and is waited for."""
        streamer: Any = None
        if on_chunk is not None:
            (TextIteratorStreamer,) = transformers_names("TextIteratorStreamer")

            streamer = TextIteratorStreamer(state.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancel = threading.Event()
        finished = anyio.Event()
        scanner = _StopScanner(request.stop)
        generated = _Generated()
        failure: Exception | None = None

        async def generate() -> None:
            nonlocal generated
            try:
                generated = await anyio.to_thread.run_sync(
                    self._generate, state, request, streamer, cancel, limiter=self._limiter
                )
            finally:
                finished.set()
                if streamer is not None:
                    streamer.end()  # wakes the reader even if generation failed or never started

        async with anyio.create_task_group() as tg:
            tg.start_soon(generate)
            try:
                if on_chunk is None:
                    await finished.wait()
                else:
                    while not scanner.stopped:
                        # abandon_on_cancel: the thread ends once generate() ends the streamer.
                        piece = await anyio.to_thread.run_sync(next, streamer, _END, abandon_on_cancel=True)
                        if not isinstance(piece, str):  # _END
                            break
                        if text := scanner.feed(piece):
                            await on_chunk(text)
                    if text := scanner.flush():
                        await on_chunk(text)
            except Exception as exc:  # re-raised after the task group, so it is not wrapped in a group
                failure = exc
            finally:
                cancel.set()  # a no-op once generation has finished; otherwise it stops the thread
        if failure is not None:
            raise failure
        if generated.error is not None:
            raise self._error(generated.error) from generated.error
        if on_chunk is None:
            text, stopped = _cut(_decode(state.tokenizer, generated.ids), request.stop)
            return generated, text, stopped
        return generated, scanner.text, scanner.stopped

    def _request(self, messages: Sequence[Message], settings: GenerationSettings | None) -> _Request:
        s = settings or GenerationSettings()
        temperature = self.temperature if s.temperature is None else s.temperature
        return _Request(
            chat=_chat(messages, self.name),
            max_new_tokens=s.max_tokens or self.max_new_tokens,
            temperature=temperature,
            top_p=s.top_p,
            stop=tuple(x for x in s.stop or () if x),
        )

    def _check_media(self, state: _Loaded, request: _Request) -> None:
        parts = [p for t in request.chat if isinstance(t["content"], list) for p in t["content"]]
        media = sorted({p["type"] for p in parts} - {"text"})
        if not media:
            return
        what = " or ".join(f"{k}s" if k == "image" else k for k in media)
        if state.processor is None:
            raise BackendError(
                f"model {self.name} has no processor for {what}; use a model folder with a processor "
                f"({' or '.join(_PROCESSOR_FILES)}) or send text only",
                backend=self.name,
            )
        refused = [k for k in media if k not in self.modalities]
        if refused:
            raise BackendError(
                f"model {self.name} does not accept {' or '.join(refused)} "
                f"(modalities: {sorted(self.modalities) or 'text only'})",
                backend=self.name,
            )

    def _config_modalities(self) -> frozenset[str]:
        if self.gguf_file is not None:
            return frozenset()
        try:
            path = resolve_path(self.model)
            if not any((path / f).is_file() for f in _PROCESSOR_FILES):
                return frozenset()
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (MoEError, OSError, ValueError):
            return frozenset()
        return _modalities_of(config) if isinstance(config, dict) else frozenset()

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

    def _load_sync(self, path: Path, adapter: Path | None) -> _Loaded:
        AutoModelForCausalLM, AutoModelForMultimodalLM, AutoTokenizer = transformers_names(
            "AutoModelForCausalLM", "AutoModelForMultimodalLM", "AutoTokenizer"
        )

        peft_model: Any = None
        if adapter is not None:
            try:
                from peft import PeftModel
            except ImportError as exc:
                hint = f"{self.name}: adapter {adapter} needs peft; {_PEFT_HINT}"
                raise ConfigError(hint, path=adapter) from exc
            peft_model = PeftModel
        processor = self._load_processor(path)
        model: Any
        if self.gguf_file is not None:
            model, tokenizer = self._load_gguf(path, self.gguf_file, AutoModelForCausalLM, AutoTokenizer)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path) if processor is None else processor.tokenizer
            auto: Any = AutoModelForCausalLM if processor is None else AutoModelForMultimodalLM
            model = _text_model(auto.from_pretrained(path, **self._dtype_kwargs()))
        if peft_model is not None:
            model = peft_model.from_pretrained(model, adapter)
            if self.merge_adapter:
                model = model.merge_and_unload()
        model = model.to(self.device).eval()
        return _Loaded(model, tokenizer, _nbytes(model), processor)

    def _load_gguf(self, path: Path, gguf_file: str, auto_model: Any, auto_tokenizer: Any) -> tuple[Any, Any]:
        """The model and tokenizer of ``path / gguf_file``: from the conversion cache, or converted
        (and then cached)."""
        entry = self._cache_entry(path / gguf_file)
        if entry.is_dir():
            try:
                return _load_entry(entry, auto_model, auto_tokenizer, self._dtype_kwargs())
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning("backend.gguf_cache_invalid", backend=self.name, path=str(entry), error=error)
                remove_entry(entry)
        log.info("backend.gguf_convert", backend=self.name, gguf_file=gguf_file, cache=str(entry))
        tokenizer = auto_tokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = auto_model.from_pretrained(path, gguf_file=gguf_file, **self._dtype_kwargs())
        if not all(p.is_floating_point() for p in model.parameters()):
            return model, tokenizer  # weights kept in GGUF blocks (a matmul kernel is installed)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are dense already; a GGUF-quantized model won't save
            quantizer.remove_quantization_config(model)
        started = time.perf_counter()
        try:
            written = write_entry(entry, model, tokenizer)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("backend.gguf_cache_unwritable", backend=self.name, path=str(entry), error=error)
        else:
            s = round(time.perf_counter() - started, 3)
            log.debug("backend.gguf_cached", backend=self.name, path=str(entry), written=written, s=s)
        return model, tokenizer

    def _cache_entry(self, gguf: Path) -> Path:
        """The conversion cache's entry for ``gguf``; hashed once while the file's size, mtime and
        inode stay the same."""
        st = gguf.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._gguf_entry is None or self._gguf_entry[0] != stamp:
            self._gguf_entry = (stamp, entry_path(gguf, self.dtype))
        return self._gguf_entry[1]

    def _dtype_kwargs(self) -> dict[str, Any]:
        return {} if self.dtype is None else {"dtype": self.dtype}

    def _load_processor(self, path: Path) -> Any:
        """The folder's processor, or ``None`` when it has none (then the tokenizer does the work)."""
        if self.gguf_file is not None or not any((path / f).is_file() for f in _PROCESSOR_FILES):
            return None
        AutoProcessor, ProcessorMixin = transformers_names("AutoProcessor", "ProcessorMixin")

        try:
            processor = AutoProcessor.from_pretrained(path)
        except ImportError as exc:  # e.g. Qwen3-Omni's video processor needs torchvision, even for audio
            reason = " ".join(str(exc).split())  # transformers' message spans several lines
            hint = f"{self.name}: its processor needs a package that is not installed: {reason}"
            raise ConfigError(hint, path=path) from exc
        return processor if isinstance(processor, ProcessorMixin) else None

    def _generate(
        self, state: _Loaded, request: _Request, streamer: Any, cancel: threading.Event
    ) -> _Generated:
        """Runs in a worker thread; returns errors instead of raising so the caller translates them."""
        import torch

        out = _Generated()
        try:
            model, tokenizer = state.model, state.tokenizer
            with state.encode_lock:
                if state.processor is None:
                    inputs = _encode(_render_text(tokenizer), request.chat).to(model.device)
                else:
                    chat = _decode_media(request.chat, state.processor)
                    inputs = _encode(_render_processor(state.processor), chat)
                    inputs = inputs.to(model.device).to(model.dtype)  # casts only floating inputs
            out.prompt_tokens = int(inputs["input_ids"].shape[1])
            config = model.generation_config
            sampling: dict[str, Any] = {"do_sample": request.temperature > 0}
            if request.temperature > 0:
                sampling["temperature"] = request.temperature
                if request.top_p is not None:
                    sampling["top_p"] = request.top_p
            if config.pad_token_id is None:
                sampling["pad_token_id"] = (
                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                )
            with torch.inference_mode():
                ids = model.generate(
                    **inputs,
                    **sampling,
                    max_new_tokens=request.max_new_tokens,
                    stopping_criteria=_criteria(cancel, request.stop, tokenizer, out.prompt_tokens),
                    streamer=streamer,
                )
            out.ids = ids[0, out.prompt_tokens :].tolist()
            out.eos = bool(out.ids) and out.ids[-1] in _eos_ids(config, tokenizer)
        except Exception as exc:
            out.error = exc
        return out

    def _error(self, exc: Exception) -> BackendError:
        if isinstance(exc, BackendError):
            return exc
        return BackendError(f"{self.name}: generation failed: {type(exc).__name__}: {exc}", backend=self.name)


class _StopScanner:
    """Streams text up to the first stop string, holding back what could be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        self.text, self.stopped = _cut(self.text, self.stops)
        end = len(self.text) if self.stopped else len(self.text) - self._held()
        return self._emit(max(end, self.sent))

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _held(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stops):
                return n
        return 0

    def _emit(self, end: int) -> str:
        out, self.sent = self.text[self.sent : end], end
        return out


def _chat(messages: Sequence[Message], name: str) -> list[dict[str, Any]]:
    """Chat turns for the template: text parts are joined into a string; a message with image or
    audio parts keeps a list of ``text`` / ``image`` / ``audio`` parts holding the raw bytes."""
    chat: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            parts = [_part(p, name) for p in content]
            if all(p["type"] == "text" for p in parts):
                content = "\n".join(p["text"] for p in parts)
            else:
                content = parts
        chat.append({"role": str(m["role"]), "content": content})
    return chat


def _part(part: Mapping[str, Any], name: str) -> dict[str, Any]:
    kind = part.get("type")
    try:
        if kind == "text":
            return {"type": "text", "text": str(part["text"])}
        if kind == "image_url":
            url = part["image_url"]["url"]
            header, sep, payload = url.partition(",")
            if not (url.startswith("data:") and sep and header.endswith(";base64")):
                raise BackendError(
                    f"{name}: only inline images (base64 data: URLs) are supported, not {url[:40]!r}",
                    backend=name,
                )
            return {"type": "image", "data": base64.b64decode(payload, validate=True)}
        if kind == "input_audio":
            audio = part["input_audio"]
            if (fmt := audio.get("format", "wav")) != "wav":
                raise BackendError(f"{name}: only WAV audio is supported, got {fmt!r}", backend=name)
            data = base64.b64decode(audio["data"], validate=True)
            _check_wav(data)
            return {"type": "audio", "data": data}
    except (KeyError, TypeError, AttributeError, binascii.Error, wave.Error, EOFError) as exc:
        raise BackendError(f"{name}: malformed {kind} message part: {exc!r}", backend=name) from exc
    raise BackendError(f"{name}: unsupported message part type {kind!r}", backend=name)


def _modalities_of(config: Mapping[str, Any]) -> frozenset[str]:
    """``image`` / ``audio`` for a vision / audio sub-config, looked for in nested ``*_config``s too."""
    found = {"image"} if "vision_config" in config else set()
    if "audio_config" in config:
        found.add("audio")
    for key, value in config.items():
        if key.endswith("_config") and isinstance(value, Mapping):
            found |= _modalities_of(value)
    return frozenset(found)


def _decode_media(chat: list[dict[str, Any]], processor: Any) -> list[dict[str, Any]]:
    """The chat with image bytes opened as RGB PIL images and WAV bytes as mono float arrays at the
    processor's sampling rate, the shapes ``processor.apply_chat_template`` takes."""
    from PIL import Image

    rate = int(getattr(getattr(processor, "feature_extractor", None), "sampling_rate", 16_000))
    decoded = []
    for turn in chat:
        content = turn["content"]
        if isinstance(content, list):
            content = [
                {"type": "image", "image": Image.open(io.BytesIO(p["data"])).convert("RGB")}
                if p["type"] == "image"
                else {"type": "audio", "audio": _wav(p["data"], rate)}
                if p["type"] == "audio"
                else p
                for p in content
            ]
        decoded.append({"role": turn["role"], "content": content})
    return decoded


def _check_wav(data: bytes) -> None:
    """Raises ``wave.Error`` unless ``data`` is a PCM WAV file with samples ``_wav`` can read."""
    with wave.open(io.BytesIO(data)) as f:
        if f.getsampwidth() not in (1, 2, 3, 4):
            raise wave.Error(f"unsupported WAV sample width: {f.getsampwidth()} bytes")
        if f.getnframes() == 0:
            raise wave.Error("the WAV file holds no samples")


def _wav(data: bytes, rate: int) -> Any:
    """PCM WAV bytes (8, 16, 24 or 32 bit) as a mono float32 array in [-1, 1], linearly resampled
    to ``rate``."""
    import numpy as np

    with wave.open(io.BytesIO(data)) as f:
        width, channels, source_rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        frames = f.readframes(f.getnframes())
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:  # the only unsigned width
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width in (2, 3, 4):
        # widened to little-endian int32 with zero low bytes, so every width scales by 2**31
        wide = np.pad(raw.reshape(-1, width), ((0, 0), (4 - width, 0)))
        samples = wide.view("<i4").ravel().astype(np.float32) / 2.0**31
    else:
        raise ValueError(f"unsupported WAV sample width: {width} bytes")
    samples = samples.reshape(-1, channels).mean(axis=1)  # (T,)
    if source_rate != rate and len(samples):
        n = round(len(samples) * rate / source_rate)
        samples = np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples)
    return samples.astype(np.float32)


def _render_text(tokenizer: Any) -> Any:
    def render(turns: list[dict[str, Any]]) -> Any:
        return tokenizer.apply_chat_template(
            turns,
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
        )

    return render


def _render_processor(processor: Any) -> Any:
    def render(turns: list[dict[str, Any]]) -> Any:
        return processor.apply_chat_template(
            turns,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
            # as with the tokenizer's apply_chat_template: the template writes the special tokens
            processor_kwargs={"add_special_tokens": False},
        )

    return render


def _encode(render: Any, chat: list[dict[str, Any]]) -> Any:
    """The tokenised prompt; a system message is merged into the first user turn if the template
    refuses the system role."""
    from jinja2 import TemplateError

    try:
        return render(chat)
    except TemplateError:
        system = "\n\n".join(_text(t["content"]) for t in chat if t["role"] == "system")
        if not system:
            raise
    rest = [t for t in chat if t["role"] != "system"]
    first_user = next((i for i, t in enumerate(rest) if t["role"] == "user"), None)
    if first_user is None:
        rest.insert(0, {"role": "user", "content": system})
    else:
        content = rest[first_user]["content"]
        if isinstance(content, str):
            merged: Any = f"{system}\n\n{content}"
        else:
            merged = [{"type": "text", "text": f"{system}\n\n"}, *content]
        rest[first_user] = {"role": "user", "content": merged}
    return render(rest)


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p["type"] == "text")


def _criteria(cancel: threading.Event, stops: tuple[str, ...], tokenizer: Any, prompt_len: int) -> Any:
    import torch
    StoppingCriteria, StoppingCriteriaList = transformers_names("StoppingCriteria", "StoppingCriteriaList")

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            done = cancel.is_set() or (
                bool(stops) and _cut(_decode(tokenizer, input_ids[0, prompt_len:]), stops)[1]
            )
            flags = torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
            return cast("torch.BoolTensor", flags)

    return StoppingCriteriaList([_Stop()])


def _decode(tokenizer: Any, ids: Any) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _eos_ids(config: Any, tokenizer: Any) -> set[int]:
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}


def _load_entry(entry: Path, auto_model: Any, auto_tokenizer: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """A conversion cache entry's model and tokenizer; raises if it does not load, or if its weights
    do not match its config (transformers would fill the gaps with random weights)."""
    model, info = auto_model.from_pretrained(entry, output_loading_info=True, **kwargs)
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    if gaps := {k: sorted(v) for k in keys if (v := info[k])}:
        raise ValueError(f"its weights do not match its config: {gaps}")
    return model, auto_tokenizer.from_pretrained(entry)


def _text_model(model: Any) -> Any:
    """The part of ``model`` that writes the text reply: the thinker of a thinker/talker model
    (Qwen3-Omni), whose own ``generate`` ignores ``max_new_tokens`` and would run the talker; the
    model itself otherwise. The talker's weights are dropped with the wrapper."""
    thinker = getattr(model, "thinker", None)
    return thinker if callable(getattr(thinker, "generate", None)) else model


def _nbytes(model: Any) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _free_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
