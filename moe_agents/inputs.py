"""Checks of what a caller sends: every problem is one ``InvalidInput`` that names the place.

The pipeline runs ``check_query`` before routing, so bad input never reaches an expert or a model.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Annotated

from .bounds import Ge, check_bounds
from .errors import InvalidInput
from .types import Query

__all__ = ["InputLimits", "check_query"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls and DEL, except \t \n \r


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on queries (the YAML ``limits:`` section).

    Attributes:
        max_query_chars: longest ``Query.text`` (and ``Query.context``) in characters.
        max_attachments: most attachments per query.
        max_attachment_bytes: largest attachment.
    """

    max_query_chars: Annotated[int, Ge(1)] = 100_000
    max_attachments: Annotated[int, Ge(0)] = 8
    max_attachment_bytes: Annotated[int, Ge(1)] = 20 * 2**20

    def __post_init__(self) -> None:
        check_bounds("limits", self)


def check_query(query: Query, limits: InputLimits | None = None) -> None:
    """Raises ``InvalidInput`` for the first problem of ``query``.

    Problems: empty text without attachments; text or context longer than the limit; control
    characters or text that is not valid Unicode (lone surrogates, e.g. from undecodable bytes);
    too many attachments; an attachment whose path does not exist, is not a file, cannot be read,
    or is larger than the limit.
    """
    limits = limits or InputLimits()
    if not query.text.strip() and not query.attachments:
        raise InvalidInput("the query is empty")
    _check_text(query.text, "query text", limits)
    if query.context is not None:
        _check_text(query.context, "query context", limits)
    if len(query.attachments) > limits.max_attachments:
        raise InvalidInput(f"{len(query.attachments)} attachments; the limit is {limits.max_attachments}")
    for i, attachment in enumerate(query.attachments):
        where = f"attachment {i} ({attachment.kind})"
        if attachment.data is not None:
            size = len(attachment.data)
        else:
            path = attachment.path
            assert path is not None
            if not path.exists():
                raise InvalidInput(f"{where}: {path} does not exist")
            if not path.is_file():
                raise InvalidInput(f"{where}: {path} is not a file")
            if not os.access(path, os.R_OK):
                raise InvalidInput(f"{where}: {path} is not readable")
            size = path.stat().st_size
        if size > limits.max_attachment_bytes:
            raise InvalidInput(f"{where} is {size} bytes; the limit is {limits.max_attachment_bytes}")


def _check_text(text: str, what: str, limits: InputLimits) -> None:
    if len(text) > limits.max_query_chars:
        raise InvalidInput(f"{what} is {len(text)} characters; the limit is {limits.max_query_chars}")
    if match := _CONTROL.search(text):
        raise InvalidInput(
            f"{what} has a control character U+{ord(match.group()):04X} at position {match.start()}"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} is not valid Unicode at position {exc.start} (a lone surrogate)"
        ) from None
