"""``ResidentBackend``: a backend whose model a ``Residency`` loads on use and may evict between calls."""

from __future__ import annotations

from collections.abc import Sequence

from ..backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from ..types import Message
from .manager import Residency
from .model import nbytes_of

__all__ = ["ResidentBackend"]


class ResidentBackend:
    """A backend whose model a ``Residency`` manages: loaded on first use within the budget, pinned
    while it generates, evictable between calls.

    ``load`` does nothing (loading is on demand); ``unload`` releases the model for good. Experts
    with several resident backends choose among them with ``Residency.choose``.

    Args:
        inner: the real backend (e.g. a ``TransformersBackend``).
        residency: the residency it is registered with (``register`` is called here).
        size_bytes: its size before the first load (default: its ``nbytes``, else its weight files
            on disk).
    """

    def __init__(self, inner: Backend, residency: Residency, *, size_bytes: int | None = None) -> None:
        self.inner = inner
        self.residency = residency
        self.name = inner.name
        self.modalities = inner.modalities
        if size_bytes is None:
            size_bytes = nbytes_of(inner) or _disk_bytes(inner)
        residency.register(inner, size_bytes=size_bytes)

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        async with self.residency.use(self.name):
            return await self.inner.complete(messages, settings=settings, on_chunk=on_chunk)

    async def load(self) -> None:
        """Nothing: the model loads when first used."""

    async def unload(self) -> None:
        await self.residency.evict(self.name)

    def __repr__(self) -> str:
        return f"ResidentBackend({self.inner!r})"


def _disk_bytes(model: object) -> int:
    disk = getattr(model, "disk_bytes", None)
    return int(disk()) if callable(disk) else 0
