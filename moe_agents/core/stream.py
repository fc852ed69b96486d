"""``AnswerStream``: the text of one answer as it is generated."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ..types import Result, Selection

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ["AnswerStream"]


class AnswerStream:
    """Text chunks of one answer as they are generated.

    ``id`` is the result's id from the start; ``selection`` is set once the router has chosen
    (before the first chunk), ``result`` after the last chunk.

    Iterate it to the end, or close it (``await stream.aclose()`` or ``async with``) to stop early:
    closing cancels the expert calls still running.
    """

    def __init__(self, receive: MemoryObjectReceiveStream[str], result_id: str) -> None:
        self._receive = receive
        self.id = result_id
        self.scope = anyio.CancelScope()
        """The producer runs in it; closing the stream cancels it."""
        self.selection: Selection | None = None
        self.result: Result | None = None
        self.error: Exception | None = None

    def __aiter__(self) -> AnswerStream:
        return self

    async def __anext__(self) -> str:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._receive.close()
            if self.error is not None:
                error, self.error = self.error, None
                raise error from None
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        """Stops the stream; the rest of the answer is not generated (running calls are cancelled)."""
        self._receive.close()
        if self.result is None:
            self.scope.cancel()

    async def __aenter__(self) -> AnswerStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def text(self) -> str:
        """Reads the stream to the end and returns the whole text."""
        return "".join([chunk async for chunk in self])
