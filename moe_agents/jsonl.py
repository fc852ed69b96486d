"""Reading JSON Lines files (optionally gzipped) with errors that name the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path, *, what: str = "JSONL") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line_number, object)`` for each non-blank line (``.gz`` files are decompressed).

    Args:
        path: the file.
        what: what the file holds, for the message when it cannot be read.

    Raises:
        ConfigError: the file cannot be read, or a line is not a JSON object (naming file and line).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"not valid JSON: {exc.msg}", path=path, line=number) from exc
                if not isinstance(row, dict):
                    raise ConfigError("expected a JSON object", path=path, line=number)
                yield number, row
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what}: {exc}", path=path) from exc
