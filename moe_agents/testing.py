"""Test doubles for code that uses moe-agents: backends that answer from a Python function.

These are for tests and demos of wiring only, never for answers a user relies on.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
import numpy as np

from .backends.base import ChunkCallback, Completion, GenerationSettings
from .errors import BackendError, MoEError
from .types import Message, Usage

__all__ = ["Call", "FunctionBackend", "HashingEncoder"]

Reply = Callable[[Sequence[Message]], "str | Completion | Awaitable[str | Completion]"]


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call to a ``FunctionBackend``."""

    messages: tuple[Message, ...]
    settings: GenerationSettings | None
    streamed: bool

    @property
    def prompt(self) -> str:
        """The last user message's text."""
        content = self.messages[-1]["content"]
        return content if isinstance(content, str) else str(content)


class FunctionBackend:
    """A backend whose replies come from ``reply(messages)`` (sync or async).

    The reply may return a string or a ``Completion``; an exception it raises becomes a
    ``BackendError`` (``MoEError`` subclasses pass through unchanged), as a real backend's would.
    When streaming, the text is sent word by word.

    Args:
        reply: computes the reply from the chat messages.
        name: shown in logs and errors.
        latency_s: sleeps this long before replying (simulates a model).
        modalities: attachment kinds it accepts.

    Attributes:
        calls: every call, in order.
        loads: how many times ``load`` ran while unloaded.
    """

    def __init__(
        self,
        reply: Reply,
        *,
        name: str = "function",
        latency_s: float = 0.0,
        modalities: Sequence[str] = (),
    ) -> None:
        self._reply = reply
        self.name = name
        self.latency_s = latency_s
        self.modalities = frozenset(modalities)
        self.calls: list[Call] = []
        self.loads = 0
        self.loaded = False

    async def load(self) -> None:
        if not self.loaded:
            self.loaded = True
            self.loads += 1

    async def unload(self) -> None:
        self.loaded = False

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        self.calls.append(Call(tuple(messages), settings, on_chunk is not None))
        if self.latency_s:
            await anyio.sleep(self.latency_s)
        try:
            out = self._reply(messages)
            if inspect.isawaitable(out):
                out = await out
        except MoEError:
            raise
        except Exception as exc:
            raise BackendError(f"{self.name}: {exc}", backend=self.name) from exc
        completion = (
            out
            if isinstance(out, Completion)
            else Completion(str(out), self.name, Usage(_count_words(messages), len(str(out).split())))
        )
        if on_chunk is not None:
            for piece in re.findall(r"\S+\s*", completion.text) or [completion.text]:
                await on_chunk(piece)
        return completion


def _count_words(messages: Sequence[Message]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


class HashingEncoder:
    """A deterministic bag-of-words encoder for fast tests (hashes words into ``dim`` buckets).

    It shares the ``Encoder`` protocol with the real sentence encoder but knows no semantics.
    """

    blocking = False
    """Encodes in microseconds, so the router calls it inline rather than in a worker thread."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[i, h % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)
