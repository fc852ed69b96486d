"""Exemplar files: JSON Lines of ``{"text": ..., "expert": ...}``, one labelled request per line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

__all__ = ["read_exemplars_jsonl"]


def read_exemplars_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """Reads ``(text, expert)`` pairs from a JSONL file (blank lines are skipped).

    Raises:
        ConfigError: the file cannot be read, or a line is not an object with string ``text`` and
            ``expert`` (the error names the file and the line).
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read exemplars: {exc}", path=path) from exc
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc.msg}", path=path, line=number) from exc
        if not isinstance(item, dict):
            raise ConfigError('expected a JSON object {"text": ..., "expert": ...}', path=path, line=number)
        for key in ("text", "expert"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                message = f"{key!r} must be a non-empty string, got {value!r}"
                raise ConfigError(message, path=path, line=number)
        text, expert = item["text"], item["expert"]
        pairs.append((text, expert))
    return pairs
