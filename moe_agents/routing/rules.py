"""Hybrid routing rules: a regular expression that sends matching queries to named experts.

Rules are checked before the gate (the HybridRouter of the seed notes): a query matching a rule is
scored only among that rule's experts; everything else goes through the gate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["Rule", "first_match"]


@dataclass(frozen=True, slots=True)
class Rule:
    """Queries whose text matches ``pattern`` (case-insensitive) go to ``experts``.

    Args:
        pattern: a regular expression searched in the query text.
        experts: the expert names this rule sends matches to.
        name: shown in ``Selection.mode`` (``rule:<name>``); defaults to the pattern.
    """

    pattern: str
    experts: tuple[str, ...]
    name: str | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            regex = re.compile(self.pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(
                f"rule pattern {self.pattern!r} is not a valid regular expression: {exc}"
            ) from exc
        if not self.experts:
            raise ConfigError(f"rule {self.pattern!r} names no experts")
        object.__setattr__(self, "experts", tuple(self.experts))
        object.__setattr__(self, "_regex", regex)

    @property
    def label(self) -> str:
        return self.name or self.pattern

    def matches(self, text: str) -> bool:
        return self._regex.search(text) is not None


def first_match(rules: Sequence[Rule], text: str) -> Rule | None:
    """The first rule (in order) whose pattern matches ``text``."""
    return next((r for r in rules if r.matches(text)), None)
