"""A backend that replays what a real model answered: recorded outputs looked up by question text.

Experiments with routers, voting and cost need real answers of real models, but calling them is slow,
costly and not reproducible. ``ReplayBackend`` answers each query with the reply a model gave to the
same question when it was recorded (see ``moe_agents.recorded``), and bills the recorded model's
price, so a pipeline built on replay backends behaves, and costs, like one built on the models.

Questions are matched by ``moe_agents.recorded.question_key``: Unicode NFKC, typographic quotes and
dashes made plain, whitespace collapsed. Case is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import anyio

from ..errors import BackendError
from ..recorded import PRICES, RecordedSet, question_key
from ..types import Message, Usage
from .base import ChunkCallback, Completion, GenerationSettings

__all__ = ["MMLU_CORRECT", "MMLU_INCORRECT", "ReplayBackend"]

MMLU_CORRECT = "correct"
"""What a replay of an MMLU recording answers where the model was right (MMLU keeps no reply texts)."""
MMLU_INCORRECT = "incorrect"
"""What a replay of an MMLU recording answers where the model was wrong."""

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_WORD = re.compile(r"\S+\s*")
_WORDS_PER_CHUNK = 4


class ReplayBackend:
    """Answers with recorded outputs of a real model: the reply recorded for the query's text.

    The question is the last user message (its string content, or the text parts of a list
    content joined by blank lines). Experts put ``query.context`` before the request, separated by a
    blank line, so when the whole message is not a recorded question, the text after each blank line
    is tried in turn (longest first).

    Token counts in ``usage`` are word counts (the recorded tokenisation is unknown); ``cost_usd`` is
    ``price_usd`` for every answered call. ``settings`` are ignored: the reply was recorded once.

    Args:
        name: shown in logs and errors (``replay:gsm8k:gpt-4-1106``).
        answers: the recorded reply for each question text (keys are matched by ``question_key``).
        model: the model id reported in completions; defaults to ``name``.
        price_usd: what one call costs, in USD.
        latency_s: sleeps this long before replying (to simulate the model's latency).
        missing: for a question without a recording, ``"error"`` raises ``BackendError``;
            ``"empty"`` answers an empty text at no cost, with ``finish_reason="missing"``.

    Raises:
        ValueError: a negative price or latency, an unknown ``missing``, or two questions with the
            same key but different answers.
    """

    def __init__(
        self,
        name: str,
        answers: Mapping[str, str],
        *,
        model: str | None = None,
        price_usd: float = 0.0,
        latency_s: float = 0.0,
        missing: Literal["error", "empty"] = "error",
    ) -> None:
        if price_usd < 0 or latency_s < 0:
            raise ValueError(f"price_usd and latency_s must be >= 0, got {price_usd} and {latency_s}")
        if missing not in ("error", "empty"):
            raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
        table: dict[str, str] = {}
        for question, answer in answers.items():
            key = question_key(question)
            if table.setdefault(key, answer) != answer:
                raise ValueError(f"two different answers recorded for {key[:60]!r}")
        self.name = name
        self.modalities: frozenset[str] = frozenset()
        self.model = model or name
        self.price_usd = price_usd
        self.latency_s = latency_s
        self.missing = missing
        self._answers = table

    def __len__(self) -> int:
        """How many distinct questions have a recorded answer."""
        return len(self._answers)

    @classmethod
    def from_recorded(
        cls,
        data: RecordedSet,
        model: str,
        *,
        name: str | None = None,
        price_usd: float | None = None,
        latency_s: float = 0.0,
        missing: Literal["error", "empty"] = "error",
    ) -> ReplayBackend:
        """A backend that replays ``model``'s recorded answers to the questions of ``data``.

        For GSM8K it replies with the model's full recorded solution. **MMLU limitation:** the MMLU
        recordings hold only whether each model was right, not what it answered, so the replay
        answers the marker text ``"correct"`` (``MMLU_CORRECT``) or ``"incorrect"``
        (``MMLU_INCORRECT``). That is enough for routing and cost experiments that score answers by
        the recorded correctness, but not for voting or answer extraction.

        Where a question occurs more than once in ``data``, its first occurrence is replayed. (MMLU
        holds 106 repeats of 106 prompts; for 3 of them Mixtral's recorded correctness differs between
        the copies, for 1 GPT-4's.)

        Args:
            data: a recorded set (``load_gsm8k_recorded``, ``load_mmlu``).
            model: one of ``data.models``.
            name: defaults to ``replay:<data.name>:<model>``.
            price_usd: per call; defaults to ``PRICES[model]`` (0 for a model without a price).
            latency_s: simulated latency per call.
            missing: see the class.

        Raises:
            ValueError: ``model`` is not one of ``data.models``.
        """
        if model not in data.models:
            raise ValueError(f"{data.name} has no recordings of {model!r}; models: {list(data.models)}")
        j = data.models.index(model)
        replies: Sequence[str]
        if data.responses is not None:
            replies = [row[j] for row in data.responses]
        else:
            replies = [MMLU_CORRECT if ok else MMLU_INCORRECT for ok in data.correct[:, j].tolist()]
        answers: dict[str, str] = {}
        for question, reply in zip(data.questions, replies, strict=True):
            answers.setdefault(question_key(question), reply)
        return cls(
            name or f"replay:{data.name}:{model}",
            answers,
            model=model,
            price_usd=PRICES.get(model, 0.0) if price_usd is None else price_usd,
            latency_s=latency_s,
            missing=missing,
        )

    async def load(self) -> None:
        """Nothing to load: the recordings are in memory."""

    async def unload(self) -> None:
        """Nothing to release."""

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        """The recorded reply to the last user message's question, streamed in chunks of a few words.

        Raises:
            BackendError: there is no user message, or (with ``missing="error"``) no recorded answer
                to its question.
        """
        prompt = _last_user_text(messages)
        if prompt is None:
            raise BackendError(f"{self.name}: no user message to answer", backend=self.name)
        text = self._lookup(prompt)
        if self.latency_s:
            await anyio.sleep(self.latency_s)
        if text is None:
            if self.missing == "error":
                raise BackendError(
                    f"{self.name}: no recorded answer for {question_key(prompt)[:60]!r}", backend=self.name
                )
            return Completion("", self.model, Usage(len(prompt.split()), 0, 0.0), finish_reason="missing")
        if on_chunk is not None:
            for chunk in _chunks(text):
                await on_chunk(chunk)
        usage = Usage(len(prompt.split()), len(text.split()), self.price_usd)
        return Completion(text, self.model, usage, finish_reason="stop")

    def _lookup(self, prompt: str) -> str | None:
        candidates = [prompt, *(prompt[m.end() :] for m in _BLANK_LINE.finditer(prompt))]
        for candidate in candidates:
            found = self._answers.get(question_key(candidate))
            if found is not None:
                return found
        return None

    def __repr__(self) -> str:
        return f"ReplayBackend({self.name!r}, {len(self._answers)} answers, price_usd={self.price_usd})"


def _last_user_text(messages: Sequence[Message]) -> str | None:
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content: Any = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            parts = [
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            ]
            return "\n\n".join(parts)
        return str(content) if content is not None else ""
    return None


def _chunks(text: str) -> list[str]:
    """``text`` in pieces of a few words that join back to exactly ``text``."""
    words = _WORD.findall(text)
    if not words:
        return [text] if text else []
    words[0] = text[: len(text) - len(text.lstrip())] + words[0]
    return ["".join(words[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(words), _WORDS_PER_CHUNK)]
