"""Built-in automatic quality scorers: cheap checks of an answer that update trust like feedback.

A scorer is any callable ``(query, answer) -> float | None`` (``None``: no opinion). YAML names
them (``scorer: python_parses``) through the registry; a Python user sets ``Expert.scorer``.
"""

from __future__ import annotations

import ast
import re

from .answers import extract_final_answer
from .experts.base import Scorer
from .types import Answer, Query

__all__ = ["BUILTIN_SCORERS", "final_answer_stated", "non_empty", "python_parses"]

_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def non_empty(query: Query, answer: Answer) -> float:
    """1 when the answer has any text, else 0."""
    return 1.0 if answer.text.strip() else 0.0


def final_answer_stated(query: Query, answer: Answer) -> float:
    """1 when a final answer can be extracted (``Final answer: …``, ``#### 42``, a boxed value), else 0."""
    return 1.0 if extract_final_answer(answer.text) is not None else 0.0


def python_parses(query: Query, answer: Answer) -> float | None:
    """The share of the answer's Python code blocks that parse; ``None`` when it has none.

    The code is parsed, never run.
    """
    blocks = _CODE_BLOCK.findall(answer.text)
    if not blocks:
        return None
    ok = 0
    for block in blocks:
        try:
            ast.parse(block)
        except (SyntaxError, ValueError):
            continue
        ok += 1
    return ok / len(blocks)


BUILTIN_SCORERS: dict[str, Scorer] = {
    "non_empty": non_empty,
    "final_answer_stated": final_answer_stated,
    "python_parses": python_parses,
}
