"""The prompt: messages to chat turns, and chat turns to token ids through the chat template.

Text parts are joined into a string; image and audio parts keep their raw bytes, checked on the way
(inline base64 images, PCM WAV audio). ``encode`` renders the turns with the tokenizer's or the
processor's template, merging a system message into the first user turn when the template refuses
the system role.
"""

from __future__ import annotations

import base64
import binascii
import wave
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import BackendError
from ...types import Message
from .media import check_wav

__all__ = ["chat_turns", "encode", "render_processor", "render_text"]


def chat_turns(messages: Sequence[Message], name: str) -> list[dict[str, Any]]:
    """Chat turns for the template: text parts are joined into a string; a message with image or
    audio parts keeps a list of ``text`` / ``image`` / ``audio`` parts holding the raw bytes."""
    chat: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") or ""
        if not isinstance(content, str):
            parts = [_part(p, name) for p in content]
            if all(p["type"] == "text" for p in parts):
                content = "\n".join(p["text"] for p in parts)
            else:
                content = parts
        chat.append({"role": str(m["role"]), "content": content})
    return chat


def _part(part: Mapping[str, Any], name: str) -> dict[str, Any]:
    kind = part.get("type")
    try:
        if kind == "text":
            return {"type": "text", "text": str(part["text"])}
        if kind == "image_url":
            url = part["image_url"]["url"]
            header, sep, payload = url.partition(",")
            if not (url.startswith("data:") and sep and header.endswith(";base64")):
                raise BackendError(
                    f"{name}: only inline images (base64 data: URLs) are supported, not {url[:40]!r}",
                    backend=name,
                )
            return {"type": "image", "data": base64.b64decode(payload, validate=True)}
        if kind == "input_audio":
            audio = part["input_audio"]
            if (fmt := audio.get("format", "wav")) != "wav":
                raise BackendError(f"{name}: only WAV audio is supported, got {fmt!r}", backend=name)
            data = base64.b64decode(audio["data"], validate=True)
            check_wav(data)
            return {"type": "audio", "data": data}
    except (KeyError, TypeError, AttributeError, binascii.Error, wave.Error, EOFError) as exc:
        raise BackendError(f"{name}: malformed {kind} message part: {exc!r}", backend=name) from exc
    raise BackendError(f"{name}: unsupported message part type {kind!r}", backend=name)


def render_text(tokenizer: Any) -> Any:
    """A renderer for ``encode`` through the tokenizer's chat template."""

    def render(turns: list[dict[str, Any]]) -> Any:
        return tokenizer.apply_chat_template(
            turns,
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
        )

    return render


def render_processor(processor: Any) -> Any:
    """A renderer for ``encode`` through the processor's chat template (turns with media decoded)."""

    def render(turns: list[dict[str, Any]]) -> Any:
        return processor.apply_chat_template(
            turns,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            sanitize_control_tokens=True,
            # as with the tokenizer's apply_chat_template: the template writes the special tokens
            processor_kwargs={"add_special_tokens": False},
        )

    return render


def encode(render: Any, chat: list[dict[str, Any]]) -> Any:
    """The tokenised prompt; a system message is merged into the first user turn if the template
    refuses the system role."""
    from jinja2 import TemplateError

    try:
        return render(chat)
    except TemplateError:
        system = "\n\n".join(_text(t["content"]) for t in chat if t["role"] == "system")
        if not system:
            raise
    rest = [t for t in chat if t["role"] != "system"]
    first_user = next((i for i, t in enumerate(rest) if t["role"] == "user"), None)
    if first_user is None:
        rest.insert(0, {"role": "user", "content": system})
    else:
        content = rest[first_user]["content"]
        if isinstance(content, str):
            merged: Any = f"{system}\n\n{content}"
        else:
            merged = [{"type": "text", "text": f"{system}\n\n"}, *content]
        rest[first_user] = {"role": "user", "content": merged}
    return render(rest)


def _text(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content if p["type"] == "text")
