"""OpenAI's chat-completions wire format: the request, its translation into a ``Query``, and the
response and chunk objects.

Messages become one query: the last message (a ``user`` one) is the request, every message before
it (system included) the query's context, as ``role: text`` lines. Its ``image_url`` and
``input_audio`` parts become attachments: ``data:`` URLs (and ``input_audio``'s base64 ``data``)
always, ``http(s)`` URLs only when the server allows remote media. ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p`` and ``stop`` become the query's
``generation`` settings, over the experts' own.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidInput
from ..types import Attachment, AttachmentKind, GenerationSettings, Query, Result, Selection, Usage

__all__ = [
    "ChatRequest",
    "FeedbackRequest",
    "chunk",
    "completion",
    "to_query",
    "usage_dict",
]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class MoEOptions(BaseModel):
    """moe-agents' own request options (the ``moe`` field of the body)."""

    model_config = ConfigDict(extra="forbid")

    details: bool = False
    """Add the full result (selection with every candidate's scores, each expert's answer,
    timings, cost) to the response as ``moe``."""


class ChatRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (fields moe-agents does not use are accepted and
    ignored, as OpenAI-compatible servers do)."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    session_id: str | None = None
    moe: MoEOptions = MoEOptions()

    @property
    def session(self) -> str | None:
        return self.session_id or self.user

    def generation(self) -> GenerationSettings | None:
        """The sampling settings the request sets (``None``: the experts' own)."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop) if self.stop else None
        settings = GenerationSettings(
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=stop,
        )
        return None if settings == GenerationSettings() else settings


class FeedbackRequest(BaseModel):
    """The body of ``POST /v1/feedback``."""

    model_config = ConfigDict(extra="forbid")

    id: str
    score: Any


_ROLES = ("system", "developer", "user", "assistant", "tool")
_MEDIA: dict[str, AttachmentKind] = {"image_url": "image", "input_audio": "audio"}


async def to_query(request: ChatRequest, *, allow_remote: bool, timeout_s: float, max_bytes: int) -> Query:
    """The query of a chat request (see the module docstring).

    Raises:
        InvalidInput: the last message is not a user message, a message has no known role, a
            content part is malformed, a media URL is not a ``data:`` URL (remote media off),
            cannot be decoded or fetched, or is larger than ``max_bytes``.
    """
    messages = request.messages
    for i, message in enumerate(messages):
        if message.get("role") not in _ROLES:
            raise InvalidInput(
                f"messages[{i}].role must be one of {list(_ROLES)}, got {message.get('role')!r}"
            )
    last = messages[-1]
    if last["role"] != "user":
        raise InvalidInput(f"the last message must be a user message, got role {last['role']!r}")
    text, attachments = await _content(
        last.get("content"), f"messages[{len(messages) - 1}]", allow_remote, timeout_s, max_bytes
    )
    turns = []
    for i, message in enumerate(messages[:-1]):
        earlier, _ = await _content(message.get("content"), f"messages[{i}]", False, timeout_s, 0)
        if earlier:
            turns.append(f"{message['role']}: {earlier}")
    return Query(
        text,
        attachments=tuple(attachments),
        context="\n\n".join(turns) or None,
        session_id=request.session,
        generation=request.generation(),
    )


async def _content(
    content: Any, where: str, allow_remote: bool, timeout_s: float, max_bytes: int
) -> tuple[str, list[Attachment]]:
    """The text and the attachments of one message's ``content``; earlier messages
    (``max_bytes == 0``) give their text only."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise InvalidInput(f"{where}.content must be a string or a list of parts")
    texts: list[str] = []
    attachments: list[Attachment] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _MEDIA:
            if max_bytes:
                attachments.append(await _media(part, kind, here, allow_remote, timeout_s, max_bytes))
        else:
            raise InvalidInput(f"{here}: unsupported content part {kind!r} (text, image_url, input_audio)")
    return "\n".join(texts), attachments


async def _media(
    part: dict[str, Any], kind: str, where: str, allow_remote: bool, timeout_s: float, max_bytes: int
) -> Attachment:
    body = part.get(kind)
    if not isinstance(body, dict):
        raise InvalidInput(f"{where}.{kind} must be an object")
    attachment_kind = _MEDIA[kind]
    if kind == "input_audio" and "data" in body:  # OpenAI's shape: base64 data and a format
        fmt = str(body.get("format") or "wav")
        return Attachment("audio", data=_b64(body["data"], where, max_bytes), mime=f"audio/{fmt}")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise InvalidInput(f"{where}.{kind}.url must be a non-empty string")
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput(f"{where}: a data: URL must be base64 (data:<mime>;base64,<data>)")
        mime = header.removesuffix(";base64") or None
        return Attachment(attachment_kind, data=_b64(payload, where, max_bytes), mime=mime)
    if not url.startswith(("http://", "https://")):
        raise InvalidInput(f"{where}: media URLs must be data: or http(s): URLs")
    if not allow_remote:
        raise InvalidInput(
            f"{where}: remote media URLs are not enabled on this server (server.allow_remote_media); "
            "send the file inline as a data: URL"
        )
    return Attachment(attachment_kind, data=await _fetch(url, where, timeout_s, max_bytes))


def _b64(data: Any, where: str, max_bytes: int) -> bytes:
    if not isinstance(data, str):
        raise InvalidInput(f"{where}: media data must be a base64 string")
    if len(data) * 3 // 4 > max_bytes + 3:
        raise InvalidInput(f"{where} is about {len(data) * 3 // 4} bytes; the limit is {max_bytes}")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: media data is not valid base64") from None


async def _fetch(url: str, where: str, timeout_s: float, max_bytes: int) -> bytes:
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            response.raise_for_status()
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > max_bytes:
                    raise InvalidInput(f"{where}: {url} is larger than the limit of {max_bytes} bytes")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise InvalidInput(f"{where}: cannot fetch {url}: {type(exc).__name__}: {exc}") from None


def usage_dict(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object, with the cost as an extra field."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cost_usd": usage.cost_usd,
    }


def answered_model(result: Result, requested: str) -> str:
    """The model that answered: the backend's model when one expert answered, else the policy."""
    if len(result.answers) == 1:
        answer = next(iter(result.answers.values()))
        return answer.model or f"{requested}/{answer.expert}"
    return requested


def completion(result: Result, requested: str, *, details: bool) -> dict[str, Any]:
    """The ``chat.completion`` object of a result."""
    body: dict[str, Any] = {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answered_model(result, requested),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage_dict(result.cost),
    }
    if details:
        body["moe"] = result.to_dict()
    return body


def chunk(
    result_id: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    *,
    finish_reason: Literal["stop"] | None = None,
    usage: Usage | None = None,
    moe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``: a delta, the end (``finish_reason``), or, with ``usage`` and
    no delta, the usage chunk (empty ``choices``)."""
    body: dict[str, Any] = {
        "id": f"chatcmpl-{result_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }
    if usage is not None:
        body["usage"] = usage_dict(usage)
    if moe is not None:
        body["moe"] = moe
    return body


def selection_headers(result_id: str, selection: Selection | None) -> dict[str, str]:
    """``x-moe-*`` headers: the result id, and the chosen experts (best first), weights and mode."""
    headers = {"x-moe-result-id": result_id}
    if selection is not None:
        headers["x-moe-experts"] = ",".join(selection.experts)
        headers["x-moe-weights"] = ",".join(f"{w:.4f}" for w in selection.weights)
        headers["x-moe-mode"] = selection.mode
    return headers
