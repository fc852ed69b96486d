"""The knowledge expert: factual questions, answered from retrieved passages when documents are given."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import anyio.to_thread
import numpy as np

from ..errors import ConfigError
from ..types import Answer, Query
from .base import LLMExpert, Signal

if TYPE_CHECKING:
    from ..backends.base import ChunkCallback
    from ..routing.encoder import Encoder

__all__ = ["KnowledgeExpert", "Passage", "quote", "split_passages"]

_SYSTEM_PROMPT = """\
You are the knowledge expert in a team of AI specialists: you answer factual questions about \
history, science, geography, culture, language, definitions and how things work.

- Answer the question directly in the first sentence, then add the context that makes the answer \
useful: names, dates, places, a short explanation.
- When numbered sources are provided, base your answer on them and cite every claim taken from a \
source with its number in square brackets, like [1] or [2][3]. Cite only sources that support the \
claim.
- If the sources do not contain the answer, say so plainly, then answer from general knowledge and \
mark that part as not coming from the sources.
- Distinguish established facts from disputed or uncertain ones; where experts disagree, give the \
range of views or estimates.
- If you do not know, say that you do not know. Never invent names, dates, numbers, quotations or \
references.
- Be concise: a few sentences or a short list, unless the user asks for detail."""

_EXEMPLARS = (
    "Who was the first emperor of Rome?",
    "Define photosynthesis in simple terms.",
    "Explain what inflation is and why central banks raise interest rates to fight it.",
    "What is the difference between a virus and a bacterium?",
    "How does a vaccine train the immune system?",
    "A tenant sublet her flat without the landlord's consent, which the lease forbids. Can the landlord "
    "recover the rent from the subtenant?",
    "A driver ran a red light and struck a cyclist who wore no helmet. Under comparative negligence, how "
    "are the cyclist's damages reduced?",
    "A seller offered a used tractor for $9,000 and the buyer replied that he accepts if delivery is "
    "included. Was a contract formed?",
    "At trial the prosecutor offers a neighbour's statement to police that the defendant admitted the theft. "
    "Is it hearsay, and does an exception apply?",
    "A homeowner rigged a spring gun in an empty cabin and it wounded a burglar. Is the homeowner liable "
    "for the injury?",
    "A state law bans all leafleting within 500 feet of the courthouse. Will it survive a First Amendment "
    "challenge?",
    "In operant conditioning, reinforcing a response after an unpredictable number of responses is called a",
    "A child who knows that pouring juice into a taller glass does not change its amount has reached which "
    "of Piaget's stages?",
    "Which kind of validity concerns whether a test measures the construct it claims to measure?",
    "A therapist's duty to warn a third party of a client's threat was established by which case?",
    "If the central bank lowers the reserve requirement, what happens to the money multiplier?",
    "When demand for a good is price elastic, a fall in its price will make total revenue",
    "Under accrual accounting, when is revenue from a one-year service contract paid in advance recognised?",
    "A patient has fatigue, pale skin and a low mean corpuscular volume. Which deficiency is most likely?",
    "Which hormone released by the pancreas lowers blood glucose?",
    "The domestication of plants and animals at the end of the last Ice Age is known as the",
    "The Monroe Doctrine of 1823 declared that",
    "In international relations, the security dilemma arises when",
    "According to our employee handbook, how many vacation days do new staff get?",
    "what's the capital city of Canada, and why isn't it Toronto?",
    "Why was the European Recovery Program launched after 1945, and who paid for it?",
    "What were the main causes of the French Revolution?",
    "What did the Treaty of Versailles require Germany to do?",
    "How many countries sit on the UN Security Council, and which ones have a veto?",
    "What does the Speaker of the House of Representatives actually do?",
    "Which organelle produces most of a cell's ATP?",
    "The enzyme that starts breaking down starch in the mouth is called ____.",
    "State Newton's second law of motion and give its SI units.",
    "Which blood type is called the universal donor, and why?",
    "What part of the brain is mainly involved in forming new long-term memories?",
    "The mitral valve separates the ____ from the left ventricle.",
    "Which vitamin deficiency causes scurvy, and which foods prevent it?",
    "What's the difference between soluble and insoluble fibre in food?",
    "What is opportunity cost? Give an everyday example.",
    "Why do airlines charge business travellers more than tourists for the same seat? What is that called "
    "in economics?",
    "What are the four Ps of the marketing mix?",
    "On a balance sheet, assets equal liabilities plus ____.",
    "What's the difference between a stock and a bond?",
    "what's the legal difference between a misdemeanour and a felony?",
    "In contract law, which elements are needed for a contract to be valid?",
    "What is classical conditioning, and who demonstrated it with dogs?",
    "What do sociologists mean by social stratification?",
    "What does a CPU cache do, and how does L1 differ from L3?",
    "How is an SSD different from a hard disk drive?",
)


@dataclass(frozen=True, slots=True)
class Passage:
    """A piece of a document, short enough to quote in a prompt.

    Attributes:
        source: the file name, or ``inline:<n>`` for the ``n``-th entry of ``documents`` given as text.
        text: the passage.
    """

    source: str
    text: str


@dataclass(eq=False, repr=False, kw_only=True)
class KnowledgeExpert(LLMExpert):
    """Answers factual questions, citing passages retrieved from its documents.

    ``load`` reads the documents, splits them into passages on paragraph boundaries and embeds them
    with ``encoder`` in a worker thread (``process`` loads on first use if the pipeline did not). Each
    call retrieves the ``top_passages`` passages most similar to the request (cosine similarity at
    least ``min_score``: an unrelated passage only misleads the model), quotes them in the prompt as
    numbered sources and asks the model to cite them as ``[1]``, ``[2]``.
    The answer's ``metadata["sources"]`` lists them, best first, as dicts
    ``{"source": str, "score": float, "text": str}``. Without documents it answers from the model alone
    and ``sources`` is empty.

    Args:
        documents: a ``Path`` is a UTF-8 text or markdown file to read; a ``str`` is the text itself.
        encoder: embeds passages and requests; ``None``: the bundled all-MiniLM-L6-v2.
        top_passages: passages quoted per request.
        passage_chars: the most characters per passage (a longer paragraph is split at sentences).
        min_score: passages less similar than this to the request are not quoted (0.25 suits
            all-MiniLM-L6-v2: related passages score 0.3–0.6, unrelated ones below 0.1).

    It takes ``LLMExpert``'s arguments too (its name defaults to ``"knowledge"``).

    Raises:
        ConfigError: ``top_passages`` or ``passage_chars`` is out of range, or (from ``load``) a
            document cannot be read.
    """

    kind: ClassVar[str] = "knowledge"
    default_system_prompt: ClassVar[str] = _SYSTEM_PROMPT
    default_exemplars: ClassVar[tuple[str, ...]] = _EXEMPLARS
    signals: ClassVar[tuple[Signal, ...]] = (
        Signal(r"^\W*(?:who|when|where)\b", 0.3),
        Signal(r"^\W*(?:what|which)\b", 0.15),
        Signal(
            r"\b(?:who|what|when|where|which)(?: \w+)? (?:is|was|are|were|did|does|do)\b(?! you\b)|"
            r"\bwhat (?:year|century|country|city|language)\b",
            0.15,
        ),
        Signal(
            r"\bhow (?:many|much) \w+(?: \w+)? (?:are there|is there|does|do|did|were|was|is|are)\b|"
            r"\bhuman body\b",
            0.2,
        ),
        Signal(
            r"\b(?:capital of|history|historical|define|definition|explain what|what does .{1,40} (?:mean|"
            r"stand for)|"
            r"tell me about|summary of|invented|discovered|founded|born|died|population of|"
            r"located|official language|currency of|the (?:first|last) \w+ (?:to|of)|largest|smallest|"
            r"tallest|"
            r"longest|highest|deepest|century|ancient|empire|war|president|king|queen|dynasty|revolution|"
            r"according to|geography|biology|chemistry|physics|anatomy|economics)\b",
            0.3,
        ),
        Signal(r"\b(?:how does|how do|why does|why do|why is|why are) (?!you\b|i\b)\w+", 0.15),
        Signal(  # embedded questions ("can you tell me who ...") and questions about who did what
            r"\b(?:tell me|know|wonder(?:ing)?|explain|find out) (?:who|what|when|where|which|why|how)\b", 0.3
        ),
        Signal(
            r"\bwho (?:\w+ )?(?:painted|wrote|composed|invented|discovered|founded|built|designed|directed|"
            r"sang|won|killed|led|ruled|signed|named|first)\b",
            0.2,
        ),
        Signal(
            r"\b(?:wiki(?:pedia)?|encyclop(?:a)?edia|source|sources|cite|reference|documentation)\b", 0.15
        ),
        Signal(  # the professions and sciences (law, psychology, economics, medicine, accounting)
            r"\b(?:plaintiff|defendant|tenant|landlord|lease|contract|negligen\w+|statute|court|sued|lawsuit|"
            r"jury|hearsay|ordinance|constitution\w*|liab\w+|damages|prosecut\w+|convicted|felony|deed|"
            r"mortgage|psycholog\w+|therap\w+|disorder|cognitive|reinforce\w+|conditioning|gdp|inflation|"
            r"monetary|fiscal|elastic\w*|tariff|patient|diagnos\w+|symptoms?|deficiency|syndrome|hormone|"
            r"enzyme|vitamin|accounting|depreciation|audit\w*)\b",
            0.25,
        ),
        # questions about the assistant itself are small talk, not facts
        Signal(
            r"\b(?:your|yours|yourself)\b|\byou\b(?! (?:tell|explain|give|show|list|name|describe|define|"
            r"summari[sz]e|recommend|remind|know|help))",
            -0.3,
        ),
    )

    documents: Sequence[str | Path] = ()
    encoder: Encoder | None = None
    top_passages: int = 3
    passage_chars: int = 600
    min_score: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.documents, (str, Path)):
            raise ConfigError(f"expert {self.name!r}: documents must be a list of paths or texts, not one")
        for doc in self.documents:
            if not isinstance(doc, (str, Path)):
                raise ConfigError(
                    f"expert {self.name!r}: a document must be a str or Path, got {type(doc).__name__}"
                )
        if self.top_passages < 1:
            raise ConfigError(f"expert {self.name!r}: top_passages must be >= 1, got {self.top_passages}")
        if self.passage_chars < 50:
            raise ConfigError(f"expert {self.name!r}: passage_chars must be >= 50, got {self.passage_chars}")
        self.documents = tuple(self.documents)
        if self.encoder is None:
            from ..routing.encoder import bundled_encoder

            self.encoder = bundled_encoder()  # its weights load on the first encode
        self._passages: tuple[Passage, ...] | None = None
        self._vectors: np.ndarray | None = None  # (P, D)
        self._load_lock = anyio.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    @property
    def passages(self) -> tuple[Passage, ...]:
        """The passages of the loaded documents (empty before ``load``)."""
        return self._passages or ()

    @property
    def loaded(self) -> bool:
        """Whether the documents have been read and embedded."""
        return self._passages is not None

    async def load(self) -> None:
        """Reads, splits and embeds the documents; does nothing if already loaded.

        Raises:
            ConfigError: a document file is missing, unreadable or not UTF-8 text.
        """
        async with self._load_lock:
            if self._passages is not None:
                return
            passages: list[Passage] = []
            for i, doc in enumerate(self.documents):
                text, source = (
                    (await self._read(doc), doc.name) if isinstance(doc, Path) else (doc, f"inline:{i}")
                )
                passages.extend(Passage(source, chunk) for chunk in split_passages(text, self.passage_chars))
            vectors = None
            if passages:
                texts = [p.text for p in passages]
                vectors = await anyio.to_thread.run_sync(self._encode, texts, limiter=self._limiter)
            self._vectors = vectors
            self._passages = tuple(passages)

    async def unload(self) -> None:
        """Forgets the passages and their vectors (a later call loads them again)."""
        async with self._load_lock:
            self._passages = None
            self._vectors = None

    async def retrieve(self, text: str) -> list[dict[str, Any]]:
        """The passages most similar to ``text``, best first, as ``{"source", "score", "text"}`` dicts.

        Loads the documents first if needed; returns ``[]`` when there are none.
        """
        if not self.documents:
            return []
        await self.load()
        passages, vectors = self._passages, self._vectors
        if not passages or vectors is None:
            return []
        query = await anyio.to_thread.run_sync(self._encode, [text], limiter=self._limiter)  # (1, D)
        scores = vectors @ query[0]  # (P,)
        top = [
            i for i in np.argsort(-scores, kind="stable")[: self.top_passages] if scores[i] >= self.min_score
        ]
        return [
            {"source": passages[i].source, "score": float(scores[i]), "text": passages[i].text} for i in top
        ]

    async def process(self, query: Query, *, on_chunk: ChunkCallback | None = None) -> Answer:
        """Retrieves passages for ``query``, puts them before its context, and answers as
        ``LLMExpert.process`` does; the passages are returned in ``metadata["sources"]``."""
        sources = await self.retrieve(query.text)
        if sources:
            quoted = "\n\n".join(
                f"[{n}] ({s['source']})\n{quote(s['text'])}" for n, s in enumerate(sources, 1)
            )
            parts = [f"Sources:\n\n{quoted}", "Answer using the sources above and cite them as [1], [2], ..."]
            if query.context:
                parts.append(query.context)
            query = query.with_context("\n\n".join(parts))
        answer = await super().process(query, on_chunk=on_chunk)
        return replace(answer, metadata={**answer.metadata, "sources": sources})

    def _encode(self, texts: list[str]) -> np.ndarray:
        assert self.encoder is not None  # set in __post_init__
        return self.encoder.encode(texts)

    async def _read(self, path: Path) -> str:
        try:
            return await anyio.Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(
                f"expert {self.name!r}: cannot read document {path}: {reason}", path=path
            ) from exc


def quote(text: str) -> str:
    """``text`` as a markdown block quote (``> `` before each line, a bare ``>`` on blank lines)."""
    return "\n".join(f"> {line}" if line.strip() else ">" for line in text.splitlines())


def split_passages(text: str, max_chars: int) -> list[str]:
    """Splits ``text`` into passages of at most ``max_chars`` characters on paragraph boundaries.

    Consecutive short paragraphs (blank-line separated) are packed into one passage; a paragraph
    longer than ``max_chars`` is split between sentences, and a sentence longer than that between
    words. Whitespace inside a paragraph is collapsed.
    """
    pieces: list[tuple[str, str]] = []  # (separator before it, text)
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if not para:
            continue
        if len(para) <= max_chars:
            pieces.append(("\n\n", para))
            continue
        for i, sentence in enumerate(re.split(r"(?<=[.!?])\s+", para)):
            chunks = textwrap.wrap(sentence, max_chars) if len(sentence) > max_chars else [sentence]
            pieces.extend(("\n\n" if i == j == 0 else " ", chunk) for j, chunk in enumerate(chunks))
    passages: list[str] = []
    current = ""
    for sep, piece in pieces:
        joined = f"{current}{sep}{piece}" if current else piece
        if len(joined) <= max_chars:
            current = joined
        else:
            passages.append(current)
            current = piece
    if current:
        passages.append(current)
    return passages
