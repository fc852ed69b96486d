"""Attachments for a processor: image bytes opened as PIL images, WAV bytes checked and decoded.

Chat turns hold the raw bytes of ``image`` and ``audio`` parts (``prompt.chat_turns`` checks them
with ``check_wav``); just before encoding, ``decode_media`` turns them into the shapes
``processor.apply_chat_template`` takes.
"""

from __future__ import annotations

import io
import wave
from typing import Any

__all__ = ["check_wav", "decode_media"]


def decode_media(chat: list[dict[str, Any]], processor: Any) -> list[dict[str, Any]]:
    """The chat with image bytes opened as RGB PIL images and WAV bytes as mono float arrays at the
    processor's sampling rate, the shapes ``processor.apply_chat_template`` takes."""
    from PIL import Image

    rate = int(getattr(getattr(processor, "feature_extractor", None), "sampling_rate", 16_000))
    decoded = []
    for turn in chat:
        content = turn["content"]
        if isinstance(content, list):
            content = [
                {"type": "image", "image": Image.open(io.BytesIO(p["data"])).convert("RGB")}
                if p["type"] == "image"
                else {"type": "audio", "audio": _wav(p["data"], rate)}
                if p["type"] == "audio"
                else p
                for p in content
            ]
        decoded.append({"role": turn["role"], "content": content})
    return decoded


def check_wav(data: bytes) -> None:
    """Raises ``wave.Error`` unless ``data`` is a PCM WAV file with samples ``_wav`` can read."""
    with wave.open(io.BytesIO(data)) as f:
        if f.getsampwidth() not in (1, 2, 3, 4):
            raise wave.Error(f"unsupported WAV sample width: {f.getsampwidth()} bytes")
        if f.getnframes() == 0:
            raise wave.Error("the WAV file holds no samples")


def _wav(data: bytes, rate: int) -> Any:
    """PCM WAV bytes (8, 16, 24 or 32 bit) as a mono float32 array in [-1, 1], linearly resampled
    to ``rate``."""
    import numpy as np

    with wave.open(io.BytesIO(data)) as f:
        width, channels, source_rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        frames = f.readframes(f.getnframes())
    raw = np.frombuffer(frames, dtype=np.uint8)
    if width == 1:  # the only unsigned width
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif width in (2, 3, 4):
        # widened to little-endian int32 with zero low bytes, so every width scales by 2**31
        wide = np.pad(raw.reshape(-1, width), ((0, 0), (4 - width, 0)))
        samples = wide.view("<i4").ravel().astype(np.float32) / 2.0**31
    else:
        raise ValueError(f"unsupported WAV sample width: {width} bytes")
    samples = samples.reshape(-1, channels).mean(axis=1)  # (T,)
    if source_rate != rate and len(samples):
        n = round(len(samples) * rate / source_rate)
        samples = np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples)
    return samples.astype(np.float32)
