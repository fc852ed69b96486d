"""Loading a local model: a folder or a GGUF file (through the conversion cache), a LoRA adapter, a
processor; and what a model folder says about the attachments it accepts.

``load_model`` blocks, so the backend runs it in a worker thread. A folder with a processor
(``processor_config.json`` or ``preprocessor_config.json``) is loaded with
``AutoModelForMultimodalLM``; of a thinker/talker model only the thinker is kept. A GGUF file is
converted to a dense model once and cached (``gguf_cache``); a cache entry that does not load is
logged, removed and rebuilt.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError, MoEError
from ...lazy import LOAD_LOCK, transformers_names
from ...logging import get_logger
from ...resources import resolve_path
from ..gguf_cache import remove_entry, write_entry

__all__ = ["PROCESSOR_FILES", "LoadSpec", "Loaded", "config_modalities", "free_memory", "load_model"]

log = get_logger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
"""A model folder holding one of these has a processor (for image and audio parts)."""

_PEFT_HINT = "install peft with `pip install 'moe-agents[peft]'`"


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What ``load_model`` loads and how: a backend's settings, with its folders resolved."""

    name: str
    path: Path
    adapter: Path | None
    gguf_file: str | None
    device: str
    dtype: str | None
    merge_adapter: bool


@dataclass(frozen=True, slots=True)
class Loaded:
    """A loaded model with its tokenizer, its size in bytes and its processor (``None`` without one);
    prompts are encoded under ``encode_lock``."""

    model: Any
    tokenizer: Any
    nbytes: int
    processor: Any = None
    encode_lock: threading.Lock = field(default_factory=threading.Lock)


def load_model(spec: LoadSpec, cache_entry: Callable[[Path], Path]) -> Loaded:
    """The tokenizer (or processor), the model and its adapter, on ``spec.device`` in eval mode.

    Args:
        spec: what to load.
        cache_entry: the conversion cache's entry for a GGUF file.

    Raises:
        ConfigError: an adapter is configured and peft is not installed, or the processor needs a
            package that is not installed (torchvision for Qwen3-Omni's).
    """
    with LOAD_LOCK:
        return _load_model(spec, cache_entry)


def _load_model(spec: LoadSpec, cache_entry: Callable[[Path], Path]) -> Loaded:
    AutoModelForCausalLM, AutoModelForMultimodalLM, AutoTokenizer = transformers_names(
        "AutoModelForCausalLM", "AutoModelForMultimodalLM", "AutoTokenizer"
    )

    peft_model: Any = None
    if spec.adapter is not None:
        try:
            from peft import PeftModel
        except ImportError as exc:
            hint = f"{spec.name}: adapter {spec.adapter} needs peft; {_PEFT_HINT}"
            raise ConfigError(hint, path=spec.adapter) from exc
        peft_model = PeftModel
    processor = _load_processor(spec)
    model: Any
    if spec.gguf_file is not None:
        model, tokenizer = _load_gguf(spec, spec.gguf_file, cache_entry, AutoModelForCausalLM, AutoTokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.path) if processor is None else processor.tokenizer
        auto: Any = AutoModelForCausalLM if processor is None else AutoModelForMultimodalLM
        model = _text_model(auto.from_pretrained(spec.path, **_dtype_kwargs(spec.dtype)))
    if peft_model is not None:
        model = peft_model.from_pretrained(model, spec.adapter)
        if spec.merge_adapter:
            model = model.merge_and_unload()
    model = model.to(spec.device).eval()
    return Loaded(model, tokenizer, _nbytes(model), processor)


def _load_gguf(
    spec: LoadSpec, gguf_file: str, cache_entry: Callable[[Path], Path], auto_model: Any, auto_tokenizer: Any
) -> tuple[Any, Any]:
    """The model and tokenizer of ``spec.path / gguf_file``: from the conversion cache, or converted
    (and then cached)."""
    path = spec.path
    entry = cache_entry(path / gguf_file)
    if entry.is_dir():
        try:
            return _load_entry(entry, auto_model, auto_tokenizer, _dtype_kwargs(spec.dtype))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("backend.gguf_cache_invalid", backend=spec.name, path=str(entry), error=error)
            remove_entry(entry)
    log.info("backend.gguf_convert", backend=spec.name, gguf_file=gguf_file, cache=str(entry))
    tokenizer = auto_tokenizer.from_pretrained(path, gguf_file=gguf_file)
    model = auto_model.from_pretrained(path, gguf_file=gguf_file, **_dtype_kwargs(spec.dtype))
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
        log.warning("backend.gguf_cache_unwritable", backend=spec.name, path=str(entry), error=error)
    else:
        s = round(time.perf_counter() - started, 3)
        log.debug("backend.gguf_cached", backend=spec.name, path=str(entry), written=written, s=s)
    return model, tokenizer


def _dtype_kwargs(dtype: str | None) -> dict[str, Any]:
    return {} if dtype is None else {"dtype": dtype}


def _load_processor(spec: LoadSpec) -> Any:
    """The folder's processor, or ``None`` when it has none (then the tokenizer does the work)."""
    path = spec.path
    if spec.gguf_file is not None or not any((path / f).is_file() for f in PROCESSOR_FILES):
        return None
    AutoProcessor, ProcessorMixin = transformers_names("AutoProcessor", "ProcessorMixin")

    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError as exc:  # e.g. Qwen3-Omni's video processor needs torchvision, even for audio
        reason = " ".join(str(exc).split())  # transformers' message spans several lines
        hint = f"{spec.name}: its processor needs a package that is not installed: {reason}"
        raise ConfigError(hint, path=path) from exc
    return processor if isinstance(processor, ProcessorMixin) else None


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


def free_memory() -> None:
    """Collects garbage and empties the CUDA cache (when torch is loaded and has CUDA)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def config_modalities(model: str, gguf_file: str | None) -> frozenset[str]:
    """Attachment kinds the model folder ``model`` (or ``pkg:`` spec) accepts, read from its
    ``config.json`` when it also has a processor; empty for GGUF weights, without a processor, a
    config, or the folder."""
    if gguf_file is not None:
        return frozenset()
    try:
        path = resolve_path(model)
        if not any((path / f).is_file() for f in PROCESSOR_FILES):
            return frozenset()
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (MoEError, OSError, ValueError):
        return frozenset()
    return _modalities_of(config) if isinstance(config, dict) else frozenset()


def _modalities_of(config: Mapping[str, Any]) -> frozenset[str]:
    """``image`` / ``audio`` for a vision / audio sub-config, looked for in nested ``*_config``s too."""
    found = {"image"} if "vision_config" in config else set()
    if "audio_config" in config:
        found.add("audio")
    for key, value in config.items():
        if key.endswith("_config") and isinstance(value, Mapping):
            found |= _modalities_of(value)
    return frozenset(found)
