"""The backend seam: one async method that turns chat messages into a completion.

Streaming goes through the same method: pass ``on_chunk`` and the backend calls it with each piece
of text as it is generated, then still returns the whole ``Completion``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..types import GenerationSettings, Message, Usage

__all__ = ["Backend", "ChunkCallback", "Completion", "GenerationSettings"]

ChunkCallback = Callable[[str], Awaitable[None]]
"""Receives each chunk of generated text, in order."""


@dataclass(frozen=True, slots=True)
class Completion:
    """What a backend returns: the text, the model that wrote it and what it cost."""

    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Where and how it ran (e.g. ``placement``: the Ray deployment, replica and node); it becomes
    part of the answer's metadata."""


@runtime_checkable
class Backend(Protocol):
    """A language model behind one async method.

    Attributes:
        name: a short description used in logs and errors (``litellm:gpt-4o-mini``).
        modalities: the attachment kinds it accepts besides text (``{"image"}``, ...).
    """

    name: str
    modalities: frozenset[str]

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        """Generates a reply to ``messages``; raises ``BackendError`` on failure."""
        ...

    async def load(self) -> None:
        """Loads weights or opens clients; idempotent. Called by ``async with pipeline``."""
        ...

    async def unload(self) -> None:
        """Releases what ``load`` acquired; idempotent."""
        ...
