"""Generation in a worker thread: stopping (stop strings, cancellation) and streaming.

``generate`` runs ``model.generate`` in a worker thread, under the backend's limiter, while the
calling task waits or relays the stream to ``on_chunk``. Stop strings end both the decoding (a
stopping criterion checks the decoded reply) and the streamed text (``_StopScanner`` holds back
what could be the start of one); a cancelled call or a failing ``on_chunk`` stops the thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread

from ...errors import BackendError
from ...lazy import transformers_names
from ..base import ChunkCallback
from .loading import Loaded
from .media import decode_media
from .prompt import encode, render_processor, render_text

if TYPE_CHECKING:
    import torch

__all__ = ["Generated", "Request", "generate"]

_END = object()


@dataclass(frozen=True, slots=True)
class Request:
    """One call's chat turns and sampling settings, resolved against the backend's defaults."""

    chat: list[dict[str, Any]]
    max_new_tokens: int
    temperature: float
    top_p: float | None
    stop: tuple[str, ...]


@dataclass(slots=True)
class Generated:
    """What the worker thread produced: prompt length, new token ids, whether the last one is an
    end-of-sequence token, or the error it hit."""

    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    eos: bool = False
    error: Exception | None = None


async def generate(
    state: Loaded,
    request: Request,
    on_chunk: ChunkCallback | None,
    *,
    limiter: anyio.CapacityLimiter,
    name: str,
) -> tuple[Generated, str, bool]:
    """Generates in a worker thread while this task waits (or relays the stream); if this task
    is cancelled or ``on_chunk`` raises, the thread is told to stop and is waited for.

    Args:
        state: the loaded model.
        request: the call.
        on_chunk: receives the text as it is decoded, up to the first stop string.
        limiter: bounds the generations that share the model.
        name: the backend's name, for errors.

    Returns:
        What was generated, the text up to the first stop string, and whether one was found.

    Raises:
        BackendError: generation failed.
    """
    streamer: Any = None
    if on_chunk is not None:
        (TextIteratorStreamer,) = transformers_names("TextIteratorStreamer")

        streamer = TextIteratorStreamer(state.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    finished = anyio.Event()
    scanner = _StopScanner(request.stop)
    generated = Generated()
    failure: Exception | None = None

    async def in_thread() -> None:
        nonlocal generated
        try:
            generated = await anyio.to_thread.run_sync(
                _generate_sync, state, request, streamer, cancel, limiter=limiter
            )
        finally:
            finished.set()
            if streamer is not None:
                streamer.end()  # wakes the reader even if generation failed or never started

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_thread)
        try:
            if on_chunk is None:
                await finished.wait()
            else:
                while not scanner.stopped:
                    # abandon_on_cancel: the thread ends once in_thread() ends the streamer.
                    piece = await anyio.to_thread.run_sync(next, streamer, _END, abandon_on_cancel=True)
                    if not isinstance(piece, str):  # _END
                        break
                    if text := scanner.feed(piece):
                        await on_chunk(text)
                if text := scanner.flush():
                    await on_chunk(text)
        except Exception as exc:  # re-raised after the task group, so it is not wrapped in a group
            failure = exc
        finally:
            cancel.set()  # a no-op once generation has finished; otherwise it stops the thread
    if failure is not None:
        raise failure
    if generated.error is not None:
        raise _error(name, generated.error) from generated.error
    if on_chunk is None:
        text, stopped = _cut(_decode(state.tokenizer, generated.ids), request.stop)
        return generated, text, stopped
    return generated, scanner.text, scanner.stopped


def _generate_sync(state: Loaded, request: Request, streamer: Any, cancel: threading.Event) -> Generated:
    """Runs in a worker thread; returns errors instead of raising so the caller translates them."""
    import torch

    out = Generated()
    try:
        model, tokenizer = state.model, state.tokenizer
        with state.encode_lock:
            if state.processor is None:
                inputs = encode(render_text(tokenizer), request.chat).to(model.device)
            else:
                chat = decode_media(request.chat, state.processor)
                inputs = encode(render_processor(state.processor), chat)
                inputs = inputs.to(model.device).to(model.dtype)  # casts only floating inputs
        out.prompt_tokens = int(inputs["input_ids"].shape[1])
        config = model.generation_config
        sampling: dict[str, Any] = {"do_sample": request.temperature > 0}
        if request.temperature > 0:
            sampling["temperature"] = request.temperature
            if request.top_p is not None:
                sampling["top_p"] = request.top_p
        if config.pad_token_id is None:
            sampling["pad_token_id"] = (
                tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            )
        with torch.inference_mode():
            ids = model.generate(
                **inputs,
                **sampling,
                max_new_tokens=request.max_new_tokens,
                stopping_criteria=_criteria(cancel, request.stop, tokenizer, out.prompt_tokens),
                streamer=streamer,
            )
        out.ids = ids[0, out.prompt_tokens :].tolist()
        out.eos = bool(out.ids) and out.ids[-1] in _eos_ids(config, tokenizer)
    except Exception as exc:
        out.error = exc
    return out


def _error(name: str, exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(f"{name}: generation failed: {type(exc).__name__}: {exc}", backend=name)


class _StopScanner:
    """Streams text up to the first stop string, holding back what could be the start of one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        self.text += piece
        self.text, self.stopped = _cut(self.text, self.stops)
        end = len(self.text) if self.stopped else len(self.text) - self._held()
        return self._emit(max(end, self.sent))

    def flush(self) -> str:
        return self._emit(len(self.text))

    def _held(self) -> int:
        """Length of the longest suffix of the text that is a proper prefix of a stop string."""
        for n in range(min(len(self.text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.text[-n:]) for s in self.stops):
                return n
        return 0

    def _emit(self, end: int) -> str:
        out, self.sent = self.text[self.sent : end], end
        return out


def _criteria(cancel: threading.Event, stops: tuple[str, ...], tokenizer: Any, prompt_len: int) -> Any:
    """A stopping criterion that ends generation once ``cancel`` is set or the decoded reply holds
    one of ``stops``."""
    import torch

    StoppingCriteria: type[Any]  # a class known only at run time: typed so it can be a base class
    StoppingCriteria, StoppingCriteriaList = transformers_names("StoppingCriteria", "StoppingCriteriaList")

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            done = cancel.is_set() or (
                bool(stops) and _cut(_decode(tokenizer, input_ids[0, prompt_len:]), stops)[1]
            )
            flags = torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)
            return cast("torch.BoolTensor", flags)

    return StoppingCriteriaList([_Stop()])


def _decode(tokenizer: Any, ids: Any) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """``text`` up to the first stop string, and whether one was found."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(found)], True) if found else (text, False)


def _eos_ids(config: Any, tokenizer: Any) -> set[int]:
    eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}
