"""Core values: what goes into a pipeline and what comes out. All frozen dataclasses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .errors import RunError

__all__ = [
    "Answer",
    "Attachment",
    "AttachmentKind",
    "ExpertScore",
    "GenerationSettings",
    "Message",
    "Query",
    "Result",
    "Selection",
    "Usage",
]

AttachmentKind = Literal["image", "audio", "file"]
_ATTACHMENT_KINDS: tuple[str, ...] = ("image", "audio", "file")

Message = Mapping[str, Any]
"""A chat message in the OpenAI shape: ``{"role": ..., "content": ...}``."""

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file sent with a query: given by ``path`` or inline ``data`` (bytes)."""

    kind: AttachmentKind
    path: Path | None = None
    data: bytes | None = None
    mime: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _ATTACHMENT_KINDS:
            raise ValueError(f"attachment kind must be one of {_ATTACHMENT_KINDS}, got {self.kind!r}")
        if (self.path is None) == (self.data is None):
            raise ValueError("an attachment needs exactly one of path= or data=")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    def read(self) -> bytes:
        """The attachment's bytes (read from ``path`` when it was given as a path)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """Sampling settings for one call; ``None`` leaves the backend's own default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None

    def merged(self, override: GenerationSettings | None) -> GenerationSettings:
        """These settings with every non-``None`` field of ``override`` taking precedence."""
        if override is None:
            return self
        return GenerationSettings(
            max_tokens=override.max_tokens if override.max_tokens is not None else self.max_tokens,
            temperature=override.temperature if override.temperature is not None else self.temperature,
            top_p=override.top_p if override.top_p is not None else self.top_p,
            stop=override.stop if override.stop is not None else self.stop,
        )


@dataclass(frozen=True, slots=True)
class Query:
    """A request to the mixture.

    Attributes:
        text: the user's request.
        attachments: images, audio or files that go with it.
        context: extra text the experts should see before the request (earlier turns, a draft to
            improve, retrieved passages).
        session_id: ties queries of one conversation together.
        generation: sampling settings for this query; each field that is set overrides the
            experts' own (``max_tokens``, ``temperature``, ``top_p``, ``stop``).
        metadata: free-form data for user code; moe-agents does not interpret it.
    """

    text: str
    _: KW_ONLY
    attachments: tuple[Attachment, ...] = ()
    context: str | None = None
    session_id: str | None = None
    generation: GenerationSettings | None = None
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Query.text must be a str, got {type(self.text).__name__}")
        object.__setattr__(self, "attachments", tuple(self.attachments))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def modalities(self) -> frozenset[str]:
        """The attachment kinds this query carries (empty for text-only queries)."""
        return frozenset(a.kind for a in self.attachments)

    def with_context(self, context: str | None) -> Query:
        """A copy of this query with ``context`` replaced."""
        return replace(self, context=context)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and money one model call (or a whole result) consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """One expert's (or the aggregate's) answer."""

    expert: str
    text: str
    _: KW_ONLY
    confidence: float = 1.0
    model: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (metadata values that JSON cannot hold become strings)."""
        return {
            "expert": self.expert,
            "text": self.text,
            "confidence": self.confidence,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "latency_s": self.latency_s,
            "metadata": _plain(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class ExpertScore:
    """How a selector scored one candidate. Fields a selector does not use are ``None``.

    ``permission`` is the final score the ranking used: ``expertise × cheapness × persistence``
    (factors that are ``None`` count as 1).
    """

    gate: float | None = None
    self_assessment: float | None = None
    load: float | None = None
    expertise: float | None = None
    trust: float | None = None
    cheapness: float | None = None
    persistence: float | None = None
    permission: float = 0.0
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Selection:
    """The experts chosen for one query, best first, with normalised weights.

    This one type is what every selector returns, at every scale.

    Attributes:
        experts: chosen expert ids, best first.
        weights: one weight per chosen expert, ≥ 0, summing to 1.
        mode: how the choice was made (``router``, ``low_confidence``, ``trust_driven``, ...).
        scores: the score breakdown of every candidate considered, chosen or not.
        context: the trust context of the query (what feedback on this choice updates), if any.
    """

    experts: tuple[str, ...]
    weights: tuple[float, ...]
    mode: str
    scores: Mapping[str, ExpertScore] = field(default_factory=lambda: _EMPTY)
    context: str | None = None

    def __post_init__(self) -> None:
        experts, weights = tuple(self.experts), tuple(float(w) for w in self.weights)
        if len(experts) != len(weights):
            raise ValueError(f"{len(experts)} experts but {len(weights)} weights")
        if len(set(experts)) != len(experts):
            raise ValueError(f"duplicate experts in selection: {experts}")
        if any(w < 0 or not math.isfinite(w) for w in weights):
            raise ValueError(f"selection weights must be finite and >= 0, got {weights}")
        if experts and not math.isclose(sum(weights), 1.0, rel_tol=0, abs_tol=1e-6):
            raise ValueError(f"selection weights must sum to 1, got {sum(weights)}")
        object.__setattr__(self, "experts", experts)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))

    @classmethod
    def from_scores(
        cls,
        ranked: list[tuple[str, float]],
        *,
        mode: str,
        scores: Mapping[str, ExpertScore],
        context: str | None = None,
    ) -> Selection:
        """Builds a selection from ``(expert, score)`` pairs, normalising the scores into weights.

        Pairs are sorted best first; if every score is 0 the weights are uniform.
        """
        ranked = sorted(ranked, key=lambda p: p[1], reverse=True)
        total = sum(max(s, 0.0) for _, s in ranked)
        n = len(ranked)
        weights = [max(s, 0.0) / total if total > 0 else 1.0 / n for _, s in ranked]
        if weights:  # absorb rounding so the sum is exactly 1
            weights[0] += 1.0 - sum(weights)
        return cls(tuple(e for e, _ in ranked), tuple(weights), mode, scores, context)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, with every candidate's score breakdown."""
        return {
            "experts": list(self.experts),
            "weights": list(self.weights),
            "mode": self.mode,
            "context": self.context,
            "scores": {name: _plain(asdict(score)) for name, score in self.scores.items()},
        }

    def weight(self, expert: str) -> float:
        """The weight of ``expert``, 0 if it was not chosen."""
        try:
            return self.weights[self.experts.index(expert)]
        except ValueError:
            return 0.0


@dataclass(frozen=True, slots=True)
class Result:
    """Everything one pipeline run produced.

    Attributes:
        id: pass it to ``Pipeline.feedback``.
        answer: the merged answer.
        selection: what the router chose.
        answers: every answer an expert gave, by expert name.
        errors: every error an expert raised, by expert name (these did not stop the run).
        timings: seconds per stage (``route``, ``experts``, ``aggregate``, ``total``) and per expert
            (``expert.<name>``).
        cost: total ``Usage`` of every model call in the run.
        metadata: what else the run used, e.g. ``context``: per expert, the conversation memory
            it was given (tokens, turns, memory ids).
    """

    id: str
    answer: Answer
    selection: Selection
    answers: Mapping[str, Answer]
    errors: Mapping[str, RunError]
    timings: Mapping[str, float]
    cost: Usage
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        for name in ("answers", "errors", "timings", "metadata"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def text(self) -> str:
        """The merged answer's text."""
        return self.answer.text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; errors become ``"<ErrorType>: <message>"`` strings."""
        return {
            "id": self.id,
            "answer": self.answer.to_dict(),
            "selection": self.selection.to_dict(),
            "answers": {name: a.to_dict() for name, a in self.answers.items()},
            "errors": {name: f"{type(e).__name__}: {e}" for name, e in self.errors.items()},
            "timings": dict(self.timings),
            "cost": self.cost.to_dict(),
            "metadata": _plain(self.metadata),
        }


def _plain(value: Any) -> Any:
    """Mappings and sequences as JSON-friendly dicts and lists; other non-JSON values as strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)
