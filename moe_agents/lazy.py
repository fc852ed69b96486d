"""transformers from worker threads: imports one thread at a time, and quiet model loading.

Model loads take ``LOAD_LOCK``, one at a time (see there).

transformers 5.x resolves its public names lazily (``_LazyModule.__getattr__``), and two threads
resolving names at once can fail with ``ImportError: cannot import name 'AutoModel'``: the local
encoder and a local backend load in parallel worker threads when a pipeline starts. Every lazy
import of transformers in this package goes through :func:`transformers_names`.

Loading a model draws transformers' progress bars on stderr. A library prints nothing unasked, so
:func:`quiet_loading` hides them unless the application enabled this library's INFO events
(``logging.getLogger("moe_agents").setLevel(logging.INFO)``, or the CLI's ``--verbose``). The GGUF
converter's bar is a plain ``tqdm`` that transformers' switch does not reach (and tqdm reads
``TQDM_DISABLE`` only at import), so it is swapped for a disabled one while the load runs.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from .errors import ConfigError

__all__ = ["LOAD_LOCK", "LOCAL_HINT", "quiet_loading", "transformers_names"]

LOCAL_HINT = "pip install torch==2.13.0 'moe-agents[local]'"
"""How to get the local-model stack (the CPU torch wheel first, so no CUDA build is pulled)."""

_IMPORT_LOCK = threading.Lock()

LOAD_LOCK = threading.Lock()
"""Held by a worker thread while it loads a model with transformers: two ``from_pretrained`` at
once (the encoder and a local backend, when a pipeline starts) can break each other, since
transformers builds models under process-wide init state (seen: ``Cannot copy out of meta
tensor``)."""
_QUIET_LOCK = threading.Lock()
_quiet_depth = 0
_bars_were_disabled = False
_gguf_tqdm: Any = None


def transformers_names(*names: str) -> tuple[Any, ...]:
    """The named attributes of ``transformers``, resolved under one process-wide lock.

    Args:
        names: public names, e.g. ``"AutoModel", "AutoTokenizer"``.

    Returns:
        The objects, in the order asked.

    Raises:
        ConfigError: transformers (or torch) is not installed.
    """
    with _IMPORT_LOCK:
        try:
            import transformers
        except ImportError as exc:  # torch or transformers missing: the core install
            raise ConfigError(f"local models need the 'local' extra: {LOCAL_HINT} ({exc})") from exc
        return tuple(getattr(transformers, name) for name in names)


@contextmanager
def quiet_loading(*, converts_gguf: bool = False) -> Iterator[None]:
    """Hides transformers' progress bars while a model loads, unless this library's INFO events are
    enabled; the previous setting is restored when the last concurrent load ends.

    Args:
        converts_gguf: the load dequantises a GGUF file, so the converter's own bar is hidden too
            (its module costs seconds to import, so it is touched only then).
    """
    global _quiet_depth, _bars_were_disabled, _gguf_tqdm
    if logging.getLogger("moe_agents").isEnabledFor(logging.INFO):
        yield
        return
    (hf_logging,) = transformers_names("logging")
    with _QUIET_LOCK:
        if _quiet_depth == 0:
            _bars_were_disabled = hf_logging.is_progress_bar_enabled() is False
            hf_logging.disable_progress_bar()
        if converts_gguf and _gguf_tqdm is None:
            _gguf_tqdm = _gguf_module().tqdm
            _gguf_module().tqdm = partial(_gguf_tqdm, disable=True)
        _quiet_depth += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                if _gguf_tqdm is not None:
                    _gguf_module().tqdm, _gguf_tqdm = _gguf_tqdm, None
                if not _bars_were_disabled:
                    hf_logging.enable_progress_bar()


def _gguf_module() -> Any:
    return importlib.import_module("transformers.modeling_gguf_pytorch_utils")
