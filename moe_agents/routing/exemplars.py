"""Exemplar files: JSON Lines of ``{"text": ..., "expert": ...}``, one labelled request per line."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..jsonl import read_jsonl

__all__ = ["read_exemplars_jsonl"]


def read_exemplars_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """Reads ``(text, expert)`` pairs from a JSONL file (blank lines are skipped).

    Raises:
        ConfigError: the file cannot be read, or a line is not an object with string ``text`` and
            ``expert`` (the error names the file and the line).
    """
    pairs: list[tuple[str, str]] = []
    for number, item in read_jsonl(path, what="exemplars"):
        for key in ("text", "expert"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                message = f"{key!r} must be a non-empty string, got {value!r}"
                raise ConfigError(message, path=path, line=number)
        text, expert = item["text"], item["expert"]
        pairs.append((text, expert))
    return pairs
