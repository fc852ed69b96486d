"""Client disconnects: a request whose client went away stops its work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from fastapi import Request

from ..logging import get_logger

__all__ = ["ClientDisconnected", "until_disconnect"]

log = get_logger(__name__)

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


async def until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """``work()``'s result; a client that disconnects first cancels it (``ClientDisconnected``).

    The request's body must have been read already: what the server receives after it is the
    disconnect.
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async def do() -> None:
            try:
                outcome.append(await work())
            except Exception as exc:  # raised as itself below, not wrapped in an exception group
                failure.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(do)
    if failure:
        raise failure[0]
    if not outcome:
        log.info("server.client_disconnected", path=request.url.path)
        raise ClientDisconnected
    return outcome[0]
