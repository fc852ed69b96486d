"""The evaluation data folder: the public test sets and recorded answers that the benchmarks and the
``replay`` backend read.

Nothing assumes where it is: it is given (``--data`` on the command line, ``data_dir`` in YAML or
code) or named by the environment variable ``MOE_AGENTS_EVAL_DATA``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["EVAL_DATA_ENV", "data_file", "eval_data_dir", "text_field"]

EVAL_DATA_ENV = "MOE_AGENTS_EVAL_DATA"
"""The environment variable naming the evaluation data folder when none is given."""

_WHERE = f"--data on the command line, data_dir in YAML or code, or the environment variable {EVAL_DATA_ENV}"


def eval_data_dir(data_dir: str | Path | None = None) -> Path:
    """The evaluation data folder: ``data_dir`` if given, else ``$MOE_AGENTS_EVAL_DATA``.

    Raises:
        ConfigError: neither is set.
    """
    if data_dir is not None and str(data_dir):
        return Path(data_dir).expanduser()
    if env := os.environ.get(EVAL_DATA_ENV):
        return Path(env).expanduser()
    raise ConfigError(f"no evaluation data folder: name one with {_WHERE}")


def data_file(data_dir: Path, relative: str) -> Path:
    """``data_dir / relative``, which must exist.

    Raises:
        ConfigError: it does not (the message says how to point at the data).
    """
    path = data_dir / relative
    if not path.exists():
        raise ConfigError(
            f"evaluation data not found: {relative} is missing under {data_dir}; point --data (or "
            f"{EVAL_DATA_ENV}) at a copy of the shared evaluation data (a development checkout has "
            "one at ../shared/data)",
            path=path,
        )
    return path


def text_field(row: Mapping[str, Any], key: str, path: Path, line: int) -> str:
    """The non-empty string ``row[key]``, stripped.

    Raises:
        ConfigError: it is missing, not a string or blank (naming ``path`` and ``line``).
    """
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"missing or empty string field {key!r}", path=path, line=line)
    return value.strip()
