"""The omni expert: queries that carry images or audio, sent to a multimodal backend."""

from __future__ import annotations

import base64
import mimetypes
from typing import Any, ClassVar

import anyio.to_thread

from ..errors import BackendError, RunError
from ..reliability import GuardedBackend
from ..types import Attachment, Message, Query
from .base import LLMExpert, Signal
from .knowledge import quote

__all__ = ["OmniExpert"]

_SYSTEM_PROMPT = """\
You are the multimodal expert in a team of AI specialists: you answer questions about images, \
audio recordings and attached files.

- Examine the attachment carefully before answering. Describe only what is actually there; when a \
detail is too small, blurry, quiet or ambiguous to make out, say so instead of guessing.
- Answer the user's question first, then give the evidence: where in the image you see it, or \
what is said or heard in the recording and roughly when.
- Read text in images (signs, labels, screenshots, documents) exactly, and quote it.
- For charts and diagrams, read values from the axes and legend and say how precise the reading is.
- For audio, transcribe speech when asked, tell speakers apart only by what can be heard, and \
describe relevant non-speech sounds.
- If there is no attachment, or it is not what the question assumes, say so.
- Do not identify real people from their faces or voices; describe them instead."""

_EXEMPLARS = (
    "What's in this picture?",
    "Describe this photo in detail.",
    "Read the text on this sign for me.",
    "Transcribe this voice memo.",
    "What language is the person speaking in this recording?",
    "Summarise what's shown in this chart.",
    "Is there anything wrong with the wiring in this photo?",
    "What song is playing in this audio clip?",
    "Convert this screenshot of a table into CSV.",
    "How many people are in this photo?",
    "What does the error message in this screenshot say?",
    "Which plant is this? I took the picture in my garden.",
    "Listen to this and tell me if the engine sound is normal.",
    "What's the handwritten note in this image saying?",
    "Explain the diagram in the attached image.",
    "Does this mole in the photo look like something I should get checked?",
    "Caption this image for Instagram.",
    "What instruments can you hear in this recording?",
    "Can you tell from my photo what breed my new puppy is? The shelter wasn't sure.",
    "Which shade of blue is the jacket in the photo I sent, navy or cobalt?",
    "What's written on the whiteboard in this photo from our meeting?",
    "Can you tell me what kind of lizard this is? It was sunbathing on my porch this morning.",
    "Transcribe the attached meeting recording and list the action items at the end.",
    "Is the woman in the picture smiling or does she look annoyed?",
    "What's the overall trend in the line graph I just uploaded?",
    "Which landmark is this? I found the photo in my grandparents' album.",
    "Here's an X-ray of my wrist, can you see anything that looks like a fracture?",
    "Count the cars parked along the street in this image.",
    "Translate the menu in this photo into English.",
    "What time does the clock in this picture show?",
    "Describe the mood and colours of the painting in this image.",
    "Pull the total and the date out of this receipt photo.",
    "Is the speaker in this audio a man or a woman, and roughly how old do they sound?",
    "Is the mushroom in these photos safe to eat?",
    "List the ingredients printed on the food label in this picture.",
    "Write alt text for this image so a screen reader user knows what's in it.",
    "According to the scoreboard in my photo, who's winning?",
    "Can you solve the maths problem in this photo of my homework sheet?",
    "What accent does the speaker have in this clip?",
    "Rate my outfit in the attached pic, is it ok for a wedding?",
    "There's supposedly a cat hidden in this image, where is it?",
    "Which chords is the guitarist playing in this recording?",
    "I've attached two photos, which one is sharper and better exposed?",
    "Looking at the bar chart in this screenshot, which month had the highest sales?",
    "Summarise this podcast episode I attached in five bullet points.",
    "What's wrong with my plant? The leaves in the photo have brown spots.",
    "Tell me what the people in this video clip are arguing about.",
    "Here's a recording of birdsong from my garden at dawn, which species is singing?",
    "How many different speakers are there in this audio file?",
)

_MEDIA = frozenset({"image", "audio"})
_AUDIO_FORMATS = {
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/vnd.wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp3": "mp3",
}


class OmniExpert(LLMExpert):
    """Answers queries with image or audio attachments through a backend that accepts them.

    ``can_handle`` is 1.0 when the query carries an image or audio attachment and low otherwise.
    ``build_messages`` turns attachments into OpenAI/litellm content parts: an image becomes an
    ``image_url`` part holding a base64 data URL, audio (WAV or MP3) an ``input_audio`` part, and a
    ``file`` attachment is quoted as text. With no backend that accepts the query's modalities,
    ``process`` raises ``BackendError`` saying how to configure one.
    """

    kind: ClassVar[str] = "omni"
    modalities: frozenset[str] = _MEDIA
    media_only: bool = True
    default_system_prompt: ClassVar[str] = _SYSTEM_PROMPT
    default_exemplars: ClassVar[tuple[str, ...]] = _EXEMPLARS
    base_confidence: ClassVar[float] = 0.05
    signals: ClassVar[tuple[Signal, ...]] = (
        Signal(
            r"\b(?:images?|photos?|photograph\w*|pictures?|pics?|screenshots?|diagrams?|charts?|scan(?:ned)?|"
            r"audio|recordings?|voice (?:memo|note|message)s?|listen\w*|sound clip|audio clip|video)\b",
            0.15,
        ),
    )

    async def can_handle(self, query: Query) -> float:
        """1.0 for a query with an image or audio attachment; otherwise 0.05, a little more when the
        text talks about images or audio."""
        if query.modalities & _MEDIA:
            return 1.0
        return await super().can_handle(query)

    def choose_backend(self, query: Query) -> GuardedBackend:
        """The least loaded backend that accepts the query's attachments.

        Raises:
            BackendError: no backend accepts them; the message says how to configure one.
        """
        try:
            return super().choose_backend(query)
        except BackendError as exc:
            needed = sorted(query.modalities & _MEDIA)
            if not needed:
                raise
            hint = (
                f"configure a multimodal backend for this expert, e.g. a litellm vision or audio model "
                f"with `modalities: [{', '.join(needed)}]`"
            )
            raise BackendError(f"{exc}; {hint}", expert=self.name) from None

    async def build_messages(self, query: Query) -> list[Message]:
        """System prompt, then one user message: the text (with any files quoted in it), then one
        content part per image or audio attachment. Without images or audio the content is plain text.

        Raises:
            RunError: an attachment cannot be read, or its type cannot be sent (audio other than
                WAV or MP3, an image whose type is unknown).
        """
        text = query.text if not query.context else f"{query.context}\n\n{query.text}"
        media: list[dict[str, Any]] = []
        for attachment in query.attachments:
            data = await self._read(attachment)
            if attachment.kind == "image":
                mime = self._mime(attachment, data)
                url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
                media.append({"type": "image_url", "image_url": {"url": url}})
            elif attachment.kind == "audio":
                fmt = self._audio_format(attachment, data)
                b64 = base64.b64encode(data).decode("ascii")
                media.append({"type": "input_audio", "input_audio": {"data": b64, "format": fmt}})
            else:
                text += "\n\n" + _quote_file(attachment, data)
        content: str | list[dict[str, Any]] = [{"type": "text", "text": text}, *media] if media else text
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": content},
        ]

    async def _read(self, attachment: Attachment) -> bytes:
        if attachment.data is not None:
            return attachment.data
        try:
            return await anyio.to_thread.run_sync(attachment.read)
        except OSError as exc:
            raise RunError(
                f"expert {self.name!r}: cannot read {attachment.kind} attachment {attachment.path}: "
                f"{exc.strerror or exc}",
                expert=self.name,
            ) from exc

    def _mime(self, attachment: Attachment, data: bytes) -> str:
        mime = attachment.mime
        if mime is None and attachment.path is not None:
            mime = mimetypes.guess_type(attachment.path.name)[0]
        mime = mime or _sniff(data)
        if mime is None:
            raise RunError(
                f"expert {self.name!r}: cannot tell the type of image attachment "
                f"{attachment.path or '(inline data)'}; give Attachment(mime=...)",
                expert=self.name,
            )
        return mime

    def _audio_format(self, attachment: Attachment, data: bytes) -> str:
        mime = self._mime(attachment, data)
        fmt = _AUDIO_FORMATS.get(mime)
        if fmt is None:
            raise RunError(
                f"expert {self.name!r}: audio attachment {attachment.path or '(inline data)'} is {mime}; "
                "only WAV and MP3 audio can be sent to a model",
                expert=self.name,
            )
        return fmt


def _sniff(data: bytes) -> str | None:
    """The MIME type of common image and audio formats, from their first bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    if data.startswith(b"ID3") or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio/mpeg"
    return None


def _quote_file(attachment: Attachment, data: bytes) -> str:
    name = attachment.path.name if attachment.path is not None else "(inline)"
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"Attached file {name}: {len(data)} bytes of binary data, not shown."
    return f"Attached file {name}:\n{quote(body.strip(chr(10)))}"
