"""What runs inside a Ray Serve replica: a backend built on the replica's node (from its kind and
options, ``BackendMaker``), answering ``complete`` and ``stream`` calls that come through a handle.

``BackendReplica`` serves one backend; ``pooled_replica(slots)`` serves several backends by model
id, at most ``slots`` loaded per replica (``@serve.multiplexed``: local models or LoRA adapters
sharing GPUs), so that Serve reports which replica holds which model.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - runs on Ray Serve's asyncio loop; a generator cannot hold a task group
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend, Completion, GenerationSettings
from ..types import Message

__all__ = ["BackendMaker", "BackendReplica", "pooled_replica"]

_END = object()


@dataclass(frozen=True)
class BackendMaker:
    """Builds a registered backend kind with its YAML options, where it is called (a replica)."""

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Backend:
        from ..registry import registry

        entry = registry.backends.get(self.kind)
        return entry.build(entry.spec.model_validate(dict(self.options)))  # type: ignore[no-any-return]


Make = Callable[[], Backend]
"""Builds the replica's backend (``BackendMaker``, or any picklable callable: tests use doubles)."""


def _placement() -> dict[str, str]:
    import ray
    from ray import serve

    context = serve.get_replica_context()
    return {
        "deployment": context.deployment,
        "replica": context.replica_id.unique_id,
        "node": ray.get_runtime_context().get_node_id(),
    }


async def _complete(
    backend: Backend, messages: Sequence[Message], settings: GenerationSettings | None
) -> tuple[Completion, dict[str, str]]:
    return await backend.complete(list(messages), settings=settings), _placement()


async def _stream(
    backend: Backend, messages: Sequence[Message], settings: GenerationSettings | None
) -> AsyncIterator[Any]:
    """Yields each chunk's text, then ``(completion, placement)``; a client that stops reading
    cancels the backend call."""
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def on_chunk(text: str) -> None:
        queue.put_nowait(text)

    async def run() -> Completion:
        try:
            return await backend.complete(list(messages), settings=settings, on_chunk=on_chunk)
        finally:
            queue.put_nowait(_END)

    task = asyncio.ensure_future(run())
    try:
        while (item := await queue.get()) is not _END:
            yield item
        yield (await task, _placement())
    finally:
        task.cancel()


class BackendReplica:
    """One replica of a backend's deployment (see the module docstring).

    Args:
        make: builds the backend (``BackendMaker(kind, options)``).
    """

    def __init__(self, make: Make) -> None:
        self.backend = make()
        self._loaded = False
        self._lock = asyncio.Lock()

    async def _ready(self) -> Backend:
        if not self._loaded:
            async with self._lock:
                if not self._loaded:
                    await self.backend.load()
                    self._loaded = True
        return self.backend

    async def describe(self) -> dict[str, Any]:
        """The backend's name and modalities, once it is loaded."""
        backend = await self._ready()
        return {"name": backend.name, "modalities": sorted(backend.modalities), **_placement()}

    async def complete(
        self, messages: Sequence[Message], settings: GenerationSettings | None = None
    ) -> tuple[Completion, dict[str, str]]:
        return await _complete(await self._ready(), messages, settings)

    async def stream(
        self, messages: Sequence[Message], settings: GenerationSettings | None = None
    ) -> AsyncIterator[Any]:
        async for item in _stream(await self._ready(), messages, settings):
            yield item


def pooled_replica(slots: int) -> type:
    """A replica class serving backends by model id (``handle.options(multiplexed_model_id=...)``),
    at most ``slots`` loaded at once; the least recently used is unloaded first.

    Its constructor takes ``{model_id: make}``.
    """
    from ray import serve

    class PooledReplica:
        def __init__(self, makers: Mapping[str, Make]) -> None:
            self.makers = dict(makers)

        @serve.multiplexed(max_num_models_per_replica=slots)
        async def backend(self, model_id: str) -> _Loaded:
            if model_id not in self.makers:
                raise KeyError(f"no backend {model_id!r} in this pool: {sorted(self.makers)}")
            backend = self.makers[model_id]()
            await backend.load()
            return _Loaded(backend)

        async def describe(self) -> dict[str, Any]:
            loaded = await self.backend(serve.get_multiplexed_model_id())
            return {
                "name": loaded.backend.name,
                "modalities": sorted(loaded.backend.modalities),
                **_placement(),
            }

        async def complete(
            self, messages: Sequence[Message], settings: GenerationSettings | None = None
        ) -> tuple[Completion, dict[str, str]]:
            loaded = await self.backend(serve.get_multiplexed_model_id())
            with loaded.using() as backend:
                return await _complete(backend, messages, settings)

        async def stream(
            self, messages: Sequence[Message], settings: GenerationSettings | None = None
        ) -> AsyncIterator[Any]:
            loaded = await self.backend(serve.get_multiplexed_model_id())
            with loaded.using() as backend:
                async for item in _stream(backend, messages, settings):
                    yield item

    return PooledReplica


class _Loaded:
    """A loaded backend; Serve calls its ``__del__`` when the slot is needed, which unloads the
    model once the calls still running on it are done (an instance attribute, so that Python's
    garbage collector never calls it)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.__del__ = self._unload  # Serve awaits an async __del__ of an evicted model

    async def _unload(self) -> None:
        await self.idle.wait()
        await self.backend.unload()

    @contextlib.contextmanager
    def using(self) -> Iterator[Backend]:
        self.calls += 1
        self.idle.clear()
        try:
            yield self.backend
        finally:
            self.calls -= 1
            if not self.calls:
                self.idle.set()
