"""Streaming chat completions: server-sent ``chat.completion.chunk`` frames.

The response is held back until the first chunk of text (or ``keepalive_s``), so that a failure
before any content (bad input, no capable expert, overload, every expert failing) is a real HTTP
error status. After that the stream is committed: a failure is an in-band ``{"error": {...}}``
frame and the stream ends without ``[DONE]``. While no chunk comes (an aggregator waiting for
every answer), a ``:`` keep-alive comment is sent every ``keepalive_s``. The library's mid-stream
fallback marker is text like any other. The first frame carries the role; the last, with
``stream_options.include_usage``, the usage with empty ``choices``; then ``data: [DONE]``.

A client that disconnects closes the ``AnswerStream``, which cancels the expert calls still
running.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from ..core.stream import AnswerStream
from ..errors import MoEError
from ..logging import get_logger
from ..pipeline import Pipeline
from ..routing.permission import Preset
from ..types import Query
from . import wire
from .disconnect import ClientDisconnected, until_disconnect
from .errors import from_exception

__all__ = ["stream_response"]

log = get_logger(__name__)

_END = object()
"""The stream ended."""
_PENDING = object()
"""No chunk came within the wait."""


async def _next(stream: AnswerStream, wait_s: float) -> object:
    """The next chunk, ``_END``, or ``_PENDING`` after ``wait_s`` (no chunk is lost: a memory
    stream's receive can be cancelled safely)."""
    with anyio.move_on_after(wait_s):
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return _END
    return _PENDING


def _sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


async def stream_response(
    request: Request,
    pipeline: Pipeline,
    body: wire.ChatRequest,
    query: Query,
    *,
    preset: Preset,
    expert: str | None,
    keepalive_s: float,
) -> Response:
    """The streaming response to ``body`` (see the module docstring)."""
    stream = pipeline.stream(query, preset=preset, expert=expert)  # bad input: the app's MoEError handler
    try:
        first = await until_disconnect(request, lambda: _next(stream, keepalive_s))
    except ClientDisconnected:
        await stream.aclose()
        return Response(status_code=499)
    except Exception as exc:  # before any content: a real status
        await stream.aclose()
        raise from_exception(exc) from None

    requested, details = body.model, body.moe.details
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    created = int(time.time())

    async def frames() -> AsyncIterator[str]:
        pending = first
        try:
            moe = (
                {"id": stream.id, "selection": stream.selection.to_dict()}
                if details and stream.selection
                else None
            )
            yield _sse(
                wire.chunk(stream.id, requested, created, {"role": "assistant", "content": ""}, moe=moe)
            )
            while pending is not _END:
                if pending is _PENDING:
                    yield ": keep-alive\n\n"
                else:
                    yield _sse(wire.chunk(stream.id, requested, created, {"content": pending}))
                pending = await _next(stream, keepalive_s)
            result = stream.result
            if result is None:
                raise MoEError("the answer ended without a result (the server is shutting down)")
            model = wire.answered_model(result, requested)
            end = wire.chunk(
                result.id, model, created, {}, finish_reason="stop", moe=result.to_dict() if details else None
            )
            yield _sse(end)
            if include_usage:
                yield _sse(wire.chunk(result.id, model, created, None, usage=result.cost))
            yield "data: [DONE]\n\n"
        except Exception as exc:  # after content: in band, then the stream ends
            err = from_exception(exc)
            log.warning("server.stream_failed", result_id=stream.id, error=err.message)
            yield _sse(err.body())
        finally:
            await stream.aclose()  # on a disconnect too: cancels the expert calls still running

    headers = {
        **wire.selection_headers(stream.id, stream.selection),
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
