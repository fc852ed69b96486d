"""The ``Expert`` interface and ``LLMExpert``, the base of every built-in expert kind."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from ..errors import BackendError, ConfigError
from ..reliability import GuardedBackend
from ..types import Answer, Message, Query

__all__ = ["Expert", "ExpertCapability", "ExpertStats", "LLMExpert", "Scorer", "Signal"]

Scorer = Callable[[Query, Answer], "float | None"]
"""An automatic quality check of one answer: a score in [0, 1], or ``None`` for no opinion."""


@dataclass(frozen=True, slots=True)
class ExpertCapability:
    """One thing an expert can do, as in the seed plan."""

    name: str
    confidence_threshold: float = 0.5
    max_load: int = 4
    average_latency_ms: float = 1000.0


@dataclass(slots=True)
class ExpertStats:
    """Running statistics of one expert, updated by the pipeline after each call."""

    total_queries: int = 0
    successes: int = 0
    failures: int = 0
    latency_ema_ms: float | None = None
    current_load: int = 0
    feedback_count: int = 0
    feedback_mean: float | None = None
    ema_alpha: float = field(default=0.2, repr=False)

    @property
    def success_rate(self) -> float:
        """Fraction of finished calls that succeeded (1.0 before the first call)."""
        done = self.successes + self.failures
        return self.successes / done if done else 1.0

    @contextmanager
    def running(self) -> Iterator[None]:
        """Counts one in-flight call for the duration of the block."""
        self.current_load += 1
        self.total_queries += 1
        try:
            yield
        finally:
            self.current_load -= 1

    def record(self, *, ok: bool, latency_s: float) -> None:
        """Records the outcome of one finished call."""
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        ms = latency_s * 1000.0
        prev = self.latency_ema_ms
        self.latency_ema_ms = ms if prev is None else prev + self.ema_alpha * (ms - prev)

    def record_feedback(self, score: float) -> None:
        """Folds one quality score in [0, 1] into the running mean."""
        self.feedback_count += 1
        prev = self.feedback_mean or 0.0
        self.feedback_mean = prev + (score - prev) / self.feedback_count


class Expert(ABC):
    """An agent that can answer some queries well.

    Subclasses set ``name`` and implement ``can_handle`` and ``process``. The pipeline keeps
    ``stats`` up to date and enforces ``max_load`` and ``timeout_s``.

    Attributes:
        name: unique name inside a pipeline.
        capabilities: what it can do, with thresholds and expected latency.
        modalities: attachment kinds it accepts (``{"image", "audio"}`` for the omni expert).
        media_only: takes only queries that carry an image or audio attachment (the omni expert:
            text-only queries belong to the text experts).
        exemplars: example requests it is good at; the router's gate is built from them.
        max_load: most concurrent calls the pipeline lets through.
        timeout_s: per-call deadline (``None``: none).
        price: what one call costs, in the unit of the pipeline's budgets (e.g. USD); the router
            turns it into ``cheapness``.
        scorer: an automatic quality check ``(query, answer) -> score in [0, 1] | None`` whose
            scores update trust like feedback does (``None``: no score for that answer).
        context_tokens: with conversation memory, the most tokens of earlier turns and memories
            put before the request.
    """

    name: str
    capabilities: tuple[ExpertCapability, ...] = ()
    modalities: frozenset[str] = frozenset()
    media_only: bool = False
    exemplars: tuple[str, ...] = ()
    max_load: int = 4
    timeout_s: float | None = 120.0
    price: float = 0.0
    scorer: Scorer | None = None
    context_tokens: int = 512

    @property
    def stats(self) -> ExpertStats:
        """Running statistics (created on first use, so subclasses need not call super().__init__)."""
        try:
            return self.__dict__["_stats"]  # type: ignore[no-any-return]
        except KeyError:
            stats = self.__dict__["_stats"] = ExpertStats()
            return stats

    @property
    def total_queries(self) -> int:
        return self.stats.total_queries

    @property
    def success_rate(self) -> float:
        return self.stats.success_rate

    @property
    def latency_ema_ms(self) -> float | None:
        return self.stats.latency_ema_ms

    @property
    def current_load(self) -> int:
        return self.stats.current_load

    def accepts(self, query: Query) -> bool:
        """Whether this expert can take the query: its attachments (images and audio) are among
        ``modalities``, and it has some if the expert is ``media_only``."""
        media = query.modalities - {"file"}
        return media <= self.modalities and (bool(media) or not self.media_only)

    @abstractmethod
    async def can_handle(self, query: Query) -> float:
        """Self-assessed confidence in [0, 1] that this expert answers ``query`` well."""

    @abstractmethod
    async def process(self, query: Query, *, on_chunk: ChunkCallback | None = None) -> Answer:
        """Answers ``query``; streams text to ``on_chunk`` when given. Raises ``RunError``."""

    async def load(self) -> None:  # noqa: B027 - optional hook
        """Acquires what the expert needs (called once by ``async with pipeline``)."""

    async def unload(self) -> None:  # noqa: B027 - optional hook
        """Releases what ``load`` acquired."""

    @property
    def backends(self) -> Sequence[Backend]:
        """The model backends this expert calls (the pipeline loads each one once)."""
        return ()

    def recovers_at(self) -> float | None:
        """``None`` when the expert can take calls now; else the ``time.monotonic()`` time at which
        it can again (``LLMExpert``: when the first of its backends leaves its cooldown)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


@dataclass(frozen=True, slots=True)
class Signal:
    """A regular expression whose match adds ``weight`` to a self-assessment."""

    pattern: str
    weight: float
    flags: int = re.IGNORECASE
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.pattern, self.flags))

    def matches(self, text: str) -> bool:
        return self._regex.search(text) is not None


class LLMExpert(Expert):
    """An expert that answers through one or more language-model backends.

    Subclasses set the class attributes ``kind``, ``default_system_prompt``, ``default_exemplars``
    and ``signals``; they may override ``build_messages`` and ``make_answer``.

    Args:
        name: defaults to the kind (``coding``, ...).
        backends: the models it may call; each call goes to the least loaded one that accepts
            the query's attachments. Each is put behind its own ``GuardedBackend`` (retries and a
            circuit breaker with the default policies) unless it is one already; experts that
            should share a breaker are given the same ``GuardedBackend``.
        system_prompt: replaces the kind's default prompt.
        exemplars: replace the kind's default exemplars (used by the router's gate).
        max_load: most concurrent calls.
        timeout_s: per-call deadline in seconds.
        settings: generation settings for every call.
        price: cost of one call (see ``Expert.price``).
        scorer: an automatic quality check (see ``Expert.scorer``).
        context_tokens: memory context budget (see ``Expert.context_tokens``).
    """

    kind: ClassVar[str] = "llm"
    default_system_prompt: ClassVar[str] = "You are a helpful assistant."
    default_exemplars: ClassVar[tuple[str, ...]] = ()
    signals: ClassVar[tuple[Signal, ...]] = ()
    base_confidence: ClassVar[float] = 0.1

    def __init__(
        self,
        name: str | None = None,
        *,
        backends: Sequence[Backend] = (),
        system_prompt: str | None = None,
        exemplars: Sequence[str] | None = None,
        max_load: int = 4,
        timeout_s: float | None = 120.0,
        settings: GenerationSettings | None = None,
        capabilities: Sequence[ExpertCapability] | None = None,
        price: float = 0.0,
        scorer: Scorer | None = None,
        context_tokens: int = 512,
    ) -> None:
        if max_load < 1:
            raise ConfigError(f"max_load must be >= 1, got {max_load}")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if price < 0:
            raise ConfigError(f"price must be >= 0, got {price}")
        self.name = name or self.kind
        if context_tokens < 0:
            raise ConfigError(f"context_tokens must be >= 0, got {context_tokens}")
        self.price = float(price)
        self.scorer = scorer
        self.context_tokens = context_tokens
        self._backends = tuple(b if isinstance(b, GuardedBackend) else GuardedBackend(b) for b in backends)
        self.system_prompt = system_prompt or self.default_system_prompt
        self.exemplars = tuple(exemplars) if exemplars is not None else self.default_exemplars
        self.max_load = max_load
        self.timeout_s = timeout_s
        self.settings = settings or GenerationSettings()
        self.capabilities = (
            tuple(capabilities)
            if capabilities is not None
            else (ExpertCapability(self.kind, max_load=max_load),)
        )
        self._in_flight: dict[int, int] = {}

    @property
    def backends(self) -> Sequence[GuardedBackend]:
        """The guarded backends this expert calls."""
        return self._backends

    def recovers_at(self) -> float | None:
        """``None`` when a backend can take a call now; else when the first leaves its cooldown
        (every backend's circuit breaker is open)."""
        if not self._backends or any(b.available for b in self._backends):
            return None
        return min(b.recovers_at for b in self._backends)

    async def can_handle(self, query: Query) -> float:
        """Base confidence plus the weight of every matching signal, clipped to [0, 1]."""
        if not self.accepts(query):
            return 0.0
        score = self.base_confidence + sum(s.weight for s in self.signals if s.matches(query.text))
        return min(max(score, 0.0), 1.0)

    async def build_messages(self, query: Query) -> list[Message]:
        """System prompt, then the query's context (if any), then the request."""
        user = query.text if not query.context else f"{query.context}\n\n{query.text}"
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]

    def answer_metadata(self, text: str) -> Mapping[str, Any]:
        """What this kind adds to ``Answer.metadata`` for a reply (e.g. the extracted final answer)."""
        return {}

    def make_answer(
        self, query: Query, completion: Completion, *, confidence: float, latency_s: float
    ) -> Answer:
        """Turns a backend completion into an ``Answer`` carrying ``answer_metadata``."""
        text = completion.text.strip()
        return Answer(
            self.name,
            text,
            confidence=confidence,
            model=completion.model,
            usage=completion.usage,
            latency_s=latency_s,
            metadata=self.answer_metadata(text),
        )

    def choose_backend(self, query: Query) -> GuardedBackend:
        """The backend for ``query``: among those that accept its attachments (and are not cooling
        down, while any is not), the best by the permission function when one ``Residency``
        manages them all (resident models need no swap and get the hysteresis bonus), else the
        least loaded."""
        needed = query.modalities - {"file"}
        fit = [b for b in self._backends if needed <= b.modalities]
        fit = [b for b in fit if b.available] or fit
        if not fit:
            what = (
                "no backend configured"
                if not self._backends
                else (f"no backend accepts {sorted(needed)} (backends: {[b.name for b in self._backends]})")
            )
            raise BackendError(f"expert {self.name!r}: {what}", expert=self.name)
        residency = fit[0].residency
        if len(fit) > 1 and residency is not None and all(b.residency is residency for b in fit):
            best = residency.choose([b.name for b in fit], np.ones(len(fit)))
            return next(b for b in fit if b.name == best)
        return min(fit, key=lambda b: self._in_flight.get(id(b), 0))

    async def process(self, query: Query, *, on_chunk: ChunkCallback | None = None) -> Answer:
        backend = self.choose_backend(query)
        messages = await self.build_messages(query)
        key = id(backend)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        start = time.perf_counter()
        try:
            completion = await backend.complete(messages, settings=self.settings, on_chunk=on_chunk)
        except BackendError as exc:
            if exc.expert is None:
                exc.expert = self.name
            raise
        finally:
            self._in_flight[key] -= 1
        latency = time.perf_counter() - start
        return self.make_answer(query, completion, confidence=await self.can_handle(query), latency_s=latency)
