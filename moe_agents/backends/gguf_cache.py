"""Where GGUF models converted by transformers are cached, and writing an entry atomically.

transformers dequantises a GGUF file into a dense model and builds its tokenizer in every process:
tens of seconds, even for SmolLM2-135M. ``TransformersBackend`` saves the result once with
``save_pretrained`` (safetensors) and loads that folder afterwards, in a fraction of a second.

An entry is the folder ``<cache>/gguf/<file stem>-<key>``; the key covers the GGUF file's size and
content (sha256), the transformers version and the dtype, so a changed file, another transformers
or another dtype gets an entry of its own. An entry is written in a temporary folder beside it and
renamed into place, so it is complete or absent. ``<cache>`` is ``$MOE_AGENTS_CACHE_DIR``, else the
user cache folder (``platformdirs.user_cache_dir("moe-agents")``); deleting ``<cache>/gguf`` clears
every entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ..resources import cache_folder

__all__ = ["cache_root", "entry_path", "remove_entry", "write_entry"]

_FORMAT = 1  # bumped when what an entry holds changes
_TMP_SUFFIX = ".tmp"
_STALE_S = 86_400.0  # a temporary folder this old was left by a process that died while writing it


def cache_root() -> Path:
    """``$MOE_AGENTS_CACHE_DIR/gguf``, else the user cache folder's ``gguf``."""
    return cache_folder("gguf")


def entry_path(gguf: Path, dtype: str | None) -> Path:
    """The entry folder for the GGUF file ``gguf`` loaded in ``dtype``, whether or not it exists.

    Reads the whole file (about 0.2 s per 100 MB).

    Raises:
        OSError: the file cannot be read.
    """
    with gguf.open("rb") as f:
        content = hashlib.file_digest(f, "sha256").hexdigest()
        size = os.fstat(f.fileno()).st_size
    material = json.dumps([_FORMAT, size, content, version("transformers"), dtype])
    key = hashlib.sha256(material.encode()).hexdigest()[:16]
    return cache_root() / f"{gguf.stem}-{key}"


def write_entry(entry: Path, model: Any, tokenizer: Any) -> bool:
    """Saves ``model`` and ``tokenizer`` (``save_pretrained``) as the entry ``entry``, atomically.

    They are written to a temporary folder beside ``entry``, which is then renamed to it. Temporary
    folders that a process which died while writing left behind over a day ago are removed first.

    Returns:
        Whether this call wrote the entry (``False``: another process wrote it first).

    Raises:
        OSError: the cache folder is not writable, or the disk is full.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(entry.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", suffix=_TMP_SUFFIX, dir=entry.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(entry)
        except OSError:
            if entry.is_dir():
                return False
            raise
        return True
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_entry(entry: Path) -> None:
    """Deletes an entry (a corrupt one); a folder that is already gone is fine."""
    shutil.rmtree(entry, ignore_errors=True)


def _remove_stale(folder: Path) -> None:
    cutoff = time.time() - _STALE_S
    for tmp in folder.glob(f".*{_TMP_SUFFIX}"):
        try:
            if tmp.stat().st_mtime < cutoff:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile
