"""The ``Expert`` interface and ``LLMExpert``, the base of every built-in expert kind."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from ..errors import BackendError
from ..reliability import GuardedBackend
from ..types import Answer, Message, Query
from .policy import ExpertPolicy, Scorer

__all__ = ["Expert", "ExpertCapability", "ExpertPolicy", "ExpertStats", "LLMExpert", "Scorer", "Signal"]


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
    ``stats`` up to date and enforces ``policy``; ``max_load``, ``timeout_s``, ``price``,
    ``scorer`` and ``context_tokens`` read it.

    Attributes:
        name: unique name inside a pipeline.
        capabilities: what it can do, with thresholds and expected latency.
        modalities: attachment kinds it accepts (``{"image", "audio"}`` for the omni expert).
        media_only: takes only queries that carry an image or audio attachment (the omni expert:
            text-only queries belong to the text experts).
        exemplars: example requests it is good at; the router's gate is built from them.
        policy: what the pipeline enforces (``ExpertPolicy``); in a pipeline, change it with
            ``Pipeline.set_policy``.
    """

    name: str
    capabilities: Sequence[ExpertCapability] = ()
    modalities: frozenset[str] = frozenset()
    media_only: bool = False
    exemplars: Sequence[str] = ()
    policy: ExpertPolicy = ExpertPolicy()
    assessment_waits: ClassVar[bool] = True
    """Whether ``can_handle`` may wait (on I/O, a model): the router then asks such experts
    concurrently; ``False`` (a rule-based assessment) lets it ask them one after another, which
    costs less than a task per expert."""

    @property
    def max_load(self) -> int:
        """``policy.max_load``."""
        return self.policy.max_load

    @property
    def timeout_s(self) -> float | None:
        """``policy.timeout_s``."""
        return self.policy.timeout_s

    @property
    def price(self) -> float:
        """``policy.price``."""
        return self.policy.price

    @property
    def scorer(self) -> Scorer | None:
        """``policy.scorer``."""
        return self.policy.scorer

    @property
    def context_tokens(self) -> int:
        """``policy.context_tokens``."""
        return self.policy.context_tokens

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


_ASSESSED_KEPT = 256


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


@dataclass(eq=False, repr=False)
class LLMExpert(Expert):
    """An expert that answers through one or more language-model backends.

    Subclasses set the class attributes ``kind``, ``default_system_prompt``, ``default_exemplars``
    and ``signals``; they may override ``build_messages`` and ``make_answer``. A subclass with
    options of its own is a ``@dataclass(eq=False, repr=False, kw_only=True)`` that declares only
    those, and checks them in ``__post_init__`` after ``super().__post_init__()``.

    Args:
        name: defaults to the kind (``coding``, ...).
        backends: the models it may call; each call goes to the least loaded one that accepts
            the query's attachments. Each is put behind its own ``GuardedBackend`` (retries and a
            circuit breaker with the default policies) unless it is one already; experts that
            should share a breaker are given the same ``GuardedBackend``. After construction
            ``backends`` holds the guards.
        system_prompt: replaces the kind's default prompt.
        exemplars: replace the kind's default exemplars (used by the router's gate).
        settings: generation settings for every call.
        capabilities: replace the default capability (the kind, at ``policy.max_load``).
        policy: what the pipeline enforces (``ExpertPolicy``: capacity, deadline, price, scorer,
            memory context).

    Raises:
        ConfigError: an option is out of range.
    """

    kind: ClassVar[str] = "llm"
    default_system_prompt: ClassVar[str] = "You are a helpful assistant."
    default_exemplars: ClassVar[tuple[str, ...]] = ()
    signals: ClassVar[tuple[Signal, ...]] = ()
    base_confidence: ClassVar[float] = 0.1
    assessment_waits: ClassVar[bool] = False  # signals are regular expressions

    name: str = ""
    _: KW_ONLY
    backends: Sequence[Backend] = ()
    system_prompt: str = ""
    exemplars: Sequence[str] | None = None  # type: ignore[assignment]  # None: the kind's; a tuple after init
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    capabilities: Sequence[ExpertCapability] | None = None  # type: ignore[assignment]  # likewise
    policy: ExpertPolicy = field(default_factory=ExpertPolicy)

    def __post_init__(self) -> None:
        self.name = self.name or self.kind
        self.system_prompt = self.system_prompt or self.default_system_prompt
        self.exemplars = tuple(self.exemplars) if self.exemplars is not None else self.default_exemplars
        self.capabilities = (
            tuple(self.capabilities)
            if self.capabilities is not None
            else (ExpertCapability(self.kind, max_load=self.policy.max_load),)
        )
        self._guards = tuple(b if isinstance(b, GuardedBackend) else GuardedBackend(b) for b in self.backends)
        self.backends = self._guards
        self._in_flight: dict[int, int] = {}
        self._assessed: dict[str, float] = {}  # recent texts' signal scores: routing and process ask both

    def recovers_at(self) -> float | None:
        """``None`` when a backend can take a call now; else when the first leaves its cooldown
        (every backend's circuit breaker is open)."""
        if not self._guards or any(b.available for b in self._guards):
            return None
        return min(b.recovers_at for b in self._guards)

    async def can_handle(self, query: Query) -> float:
        """Base confidence plus the weight of every matching signal, clipped to [0, 1]."""
        if not self.accepts(query):
            return 0.0
        text = query.text
        score = self._assessed.get(text)
        if score is None:
            score = self.base_confidence + sum(s.weight for s in self.signals if s.matches(text))
            score = min(max(score, 0.0), 1.0)
            if len(self._assessed) >= _ASSESSED_KEPT:
                self._assessed.clear()
            self._assessed[text] = score
        return score

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
            metadata={**completion.metadata, **self.answer_metadata(text)},
        )

    def choose_backend(self, query: Query) -> GuardedBackend:
        """The backend for ``query``: among those that accept its attachments (and are not cooling
        down, while any is not), the best by the permission function when one ``Residency``
        manages them all (resident models need no swap and get the hysteresis bonus), else the
        least loaded."""
        needed = query.modalities - {"file"}
        fit = [b for b in self._guards if needed <= b.modalities]
        fit = [b for b in fit if b.available] or fit
        if not fit:
            what = (
                "no backend configured"
                if not self._guards
                else (f"no backend accepts {sorted(needed)} (backends: {[b.name for b in self._guards]})")
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
            completion = await backend.complete(
                messages, settings=self.settings.merged(query.generation), on_chunk=on_chunk
            )
        except BackendError as exc:
            if exc.expert is None:
                exc.expert = self.name
            raise
        finally:
            self._in_flight[key] -= 1
        latency = time.perf_counter() - start
        return self.make_answer(query, completion, confidence=await self.can_handle(query), latency_s=latency)
