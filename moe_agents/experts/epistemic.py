"""The epistemic expert: analytical, philosophical, ethical and conversational queries, with
uncertainty stated openly (the "Introspective-Qwen" stance)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ..backends.base import Backend, Completion
from ..backends.transformers import TransformersBackend
from ..errors import ConfigError
from ..logging import get_logger
from ..reliability import GuardedBackend
from ..residency import ResidentBackend
from ..types import Answer, Query
from .base import LLMExpert, Signal

__all__ = ["EpistemicExpert"]

log = get_logger(__name__)

_SYSTEM_PROMPT = """\
You are the epistemic expert in a team of AI specialists: a thoughtful, introspective assistant \
for analytical, philosophical and ethical questions, personal dilemmas and everyday conversation.

- Before answering, consider what is really being asked, what you know, what you only believe, \
and what would change your answer.
- Say how certain you are, in plain words, and mean it: "I'm fairly confident that ...", \
"I think, but I'm not sure, that ...", "I don't know." Never sound more certain than your \
reasons allow, and never hedge on something you do know well.
- Keep facts, interpretations and values apart, and say which is which.
- On contested questions (philosophy, ethics, politics, religion), present the strongest versions \
of the main positions fairly, say which considerations weigh most and why, and when asked for your \
view give it as a view, with the reasons that could change it.
- For personal decisions ("should I ..."), help the person think: name the trade-offs and the \
questions that would settle it, rather than deciding for them.
- If the question is too ambiguous to answer well, you may ask one short clarifying question \
instead, or answer the most likely reading and end with one question. Never ask more than one.
- In small talk (greetings, thanks, jokes, questions about yourself), be warm and brief, and be \
honest that you are an AI assistant with no body, feelings or memories of your own.
- For medical, legal or financial decisions with real stakes, say when the person should consult \
a qualified professional."""

_EXEMPLARS = (
    "Do you think free will exists, or is every choice determined by prior causes?",
    "Is it ever morally right to lie to protect someone's feelings?",
    "What is the meaning of life, in your view?",
    "Could an AI like you ever be conscious? How would we know?",
    "Should I take a higher-paying job in a city where I don't know anyone?",
    "How can I tell whether a belief I hold is actually justified?",
    "What's the strongest argument against utilitarianism?",
    "Are you a human or a bot?",
    "Is it selfish to not want children?",
    "How confident are you in your own answers, honestly?",
    "My friend keeps cancelling plans at the last minute. Should I say something or let it go?",
    "What would Kant say about breaking a promise to save a life?",
    "Is there such a thing as objective truth, or is everything relative?",
    "Good morning! What can I ask you about?",
    "Why do people believe in conspiracy theories even when the evidence is against them?",
    "Is it wrong to eat meat if you could live well without it?",
    "What do you think happens to personal identity if every cell in your body is replaced?",
    "I feel like I'm wasting my twenties. How do I figure out what actually matters to me?",
    "Hey there! Hope your day is going well.",
    "Thank you so much, you explained that better than my professor did.",
    "Rough day at work. Cheer me up with something funny, maybe a pun about programmers?",
    "What did Descartes mean by 'I think, therefore I am'?",
    "Explain Plato's allegory of the cave and what it says about knowledge.",
    "What is the difference between act utilitarianism and rule utilitarianism?",
    "Is Aristotle right that we become brave by doing brave things, the way we learn a craft?",
    "What is the mind-body problem, and how does a dualist answer it?",
    "For Camus, the clash between our longing for meaning and a silent universe is called the ____.",
    "Which of the following best describes the purpose of Rawls's veil of ignorance?",
    "What is the Gettier problem, and why does it threaten the idea that knowledge is justified true belief?",
    "What is the strongest argument that voluntary euthanasia should be legal?",
    "What is the argument of Thomson's violinist case about abortion?",
    "What is Peter Singer's argument that animals deserve equal consideration of their interests?",
    "What are the main moral arguments for and against the death penalty?",
    "What are the Four Noble Truths in Buddhism?",
    "What are the Five Pillars of Islam?",
    "What do Hindus mean by karma and moksha?",
    "Why is Shabbat so central to Jewish practice?",
    "How do Christians understand the doctrine of the Trinity?",
    "The five articles of faith worn by initiated Sikhs are known as the ____.",
    "What are kami in the Shinto tradition?",
    "Why do Jain monks sweep the ground in front of them as they walk?",
    "What's a red herring in an argument? Show me one from a political debate.",
    "Which fallacy is this: 'Everyone is buying this phone, so it must be the best one'?",
    "Someone insists ghosts are real since science has never disproved them. Which fallacy is that?",
    "Name the fallacy: 'If we let students retake one exam, soon they'll expect to retake every course.'",
    "hi! do you have a name, or should I just say assistant?",
    "Be honest with me, am I talking to a real person right now or a computer program?",
    "you're honestly the best, this saved my whole afternoon",
    "ok that's all for tonight, sleep well and chat tomorrow!",
)


@dataclass(eq=False, repr=False, kw_only=True)
class EpistemicExpert(LLMExpert):
    """Handles philosophical, ethical, analytical and conversational queries, stating its uncertainty.

    Its prompt asks the model to say how sure it is ("I'm fairly confident ... / I'm not sure ...")
    and allows one clarifying question back.

    Args:
        adapter: a peft LoRA adapter folder (or ``pkg:`` spec) that fine-tunes the model for this
            stance. Each ``TransformersBackend`` in ``backends`` without an adapter of its own is
            replaced by its adapted copy (``TransformersBackend.with_adapter``, merged into the
            weights; retry guards and residency carry over). Other backends (an API model, a local
            model with its own adapter) are kept as they are: the expert still answers through
            them, ``expert.adapter_not_applied`` is logged once here, and their answers say so.

    Answers carry ``metadata["adapter"]`` (the adapter as a string, or ``None``) and
    ``metadata["adapter_applied"]`` (whether the backend that answered applied it).

    It takes ``LLMExpert``'s arguments too (its name defaults to ``"epistemic"``).

    Raises:
        ConfigError: an option is out of range, or ``adapter`` is blank.
    """

    kind: ClassVar[str] = "epistemic"
    default_system_prompt: ClassVar[str] = _SYSTEM_PROMPT
    default_exemplars: ClassVar[tuple[str, ...]] = _EXEMPLARS
    signals: ClassVar[tuple[Signal, ...]] = (
        Signal(
            r"\b(?:philosoph\w*|ethic\w*|moral\w*|immoral|conscious\w*|sentien\w*|free will|determinism|"
            r"existential\w*|existence|beliefs?|believe|objective truth|absolute truth|what is truth|"
            r"epistem\w*|metaphysic\w*|soul|afterlife|god|religio\w*|virtue|justice|fairness|"
            r"right and wrong|dilemma|utilitarian\w*|deontolog\w*|kant|nietzsche|plato|aristotle|socrat\w*|"
            r"descartes|stoic\w*|nihilis\w*|personal identity|selfish|wisdom|happiness|meaningful)\b",
            0.4,
        ),
        Signal(  # the meaning of life, however it is asked
            r"\b(?:meaning|point|purpose|reason)\b.{0,25}\b(?:life|living|alive|existence|exist|it all|"
            r"everything|creation|here on earth)\b|\blife(?:'?s|’s)?\b.{0,25}\b(?:meaning|mean|point|purpose|"
            r"all about)\b|"
            r"\bpurpose of (?:\w+ )?ex\w*nce\b|\bwhy (?:are|do) we (?:here|exist)\b",
            0.6,
        ),
        Signal(
            r"\b(?:what do you think|do you think|what(?:'s| is) your (?:view|opinion|take)|your opinion|"
            r"in your (?:view|opinion)|do you (?:believe|feel|agree)|how do you feel|would you rather|"
            r"should (?:i|we)|is it (?:ever )?(?:ok(?:ay)?|right|wrong|fair|bad|good|selfish|ethical)|"
            r"ought|advice|how (?:confident|sure|certain) are you)\b",
            0.35,
        ),
        Signal(  # greetings, thanks, farewells
            r"^\W*(?:hi|hello|hey|hiya|howdy|yo|ahoy|greetings|good (?:morning|afternoon|evening|night|day)|"
            r"thanks|thank you|cheers|bye|goodbye|see (?:you|ya)|nice to meet you|sup|gracias|merci|ciao|"
            r"adios|sayonara|syonara|farewell|fairwell|tata|later|hola|aloha|bonjour|salutations|"
            r"peace(?: out)?|"
            r"cya|tootles|buh-?bye|heller|well hello|why,? hello|nice|great|excellent|good job|"
            r"(?:really )?(?:great|awesome|perfect)!?)\b|"
            r"\b(?:how are you|how(?:'s| is| are) (?:it|things|everything|life|your day)|what's up|"
            r"what's new|"
            r"thanks?|thank you|grateful|appreciate|much obliged|good looking out|goodbye|bye|"
            r"talk (?:to you )?later|nice (?:talking|chatting)|(?:great|good|nice) (?:conversation|chat|"
            r"talk)|"
            r"i'm (?:out|leaving|done)|that's all|until next time|have a (?:good|nice|great) (?:one|day|"
            r"night)|"
            r"take it easy|(?:have|need|got) to (?:go|run|leave)|leaving now|how goes it|going okay|"
            r"what's (?:going on|happening)|wanted to say hi|good job|thankful|you're a (?:doll|star|gem))\b",
            0.5,
        ),
        Signal(  # questions about the assistant itself
            r"\b(?:who|what company|what entity|which company) \w+ (?:made|created|built|designed|"
            r"programmed|coded|developed|formed|constructed|fabricated|wrote|owns) (?:you|your)|"
            r"\b(?:your|ai's) (?:name|age|birthday|origin|nationality|hobbies|hobby|pets?|boss|employer|"
            r"creator|maker|owner|favou?rite)|\b(?:are you|am i (?:talking|speaking|chatting) (?:to|with)) "
            r"(?:a |an )?(?:real|human|bot|robot|person|ai|computer|machine|someone|alive)|"
            r"\b(?:how old are you|when were you|where (?:are|were) you|what (?:can|should) i ask|"
            r"what can you (?:do|help)|what (?:kinds? of )?(?:things|questions) can you|do you (?:have|own|"
            r"like|"
            r"enjoy|work|live|prefer)|who do you work|what do (?:people|they|i) call you|"
            r"(?:do|does) (?:the )?ai have|(?:were|are) you (?:born|from|made|created|built|located|based)|"
            r"your (?:place|country|city|town|home|location|creation|origin|birth))\b",
            0.5,
        ),
        Signal(
            r"\b(?:jokes?|joking|funny|humou?r|make me laugh|one[- ]liners?|pun|puns|fun facts?|"
            r"(?:interesting|cool|neat|fun|random|surprising|weird|intriguing) (?:facts?|tidbits?|things?|"
            r"information)|(?:tell|teach) me something|something (?:interesting|neat|fun|cool|intriguing)|"
            r"something i (?:might|may) not know|(?:tell me|know|hear) (?:a|any|some) facts?|trivia)\b",
            0.5,
        ),
        Signal(r"\b(?:you|your|yours|yourself|u|ya)\b|\b(?:the|this|my) ai\b", 0.25),
        Signal(
            r"\b(?:why do (?:we|people|humans)|is there such a thing|what makes (?:a|us|someone)|"
            r"uncertain\w*|certainty|feel(?:ing)?s?|lonely|anxious|worried|relationship|friend)\b",
            0.2,
        ),
    )

    adapter: str | Path | None = None

    def __post_init__(self) -> None:
        adapter = None if self.adapter is None else str(self.adapter)
        if adapter is not None and not adapter.strip():
            raise ConfigError(f"expert {self.name or self.kind!r}: adapter must be a non-empty path")
        self._adapted_names: frozenset[str] = frozenset()
        if adapter is not None:
            self.backends = [_adapted(b, adapter) or b for b in self.backends]
            self._adapted_names = frozenset(b.name for b in self.backends if _adapter_of(b) == adapter)
        super().__post_init__()
        if adapter is not None:
            for b in self.backends:
                if b.name not in self._adapted_names:
                    log.warning(
                        "expert.adapter_not_applied", expert=self.name, backend=b.name, adapter=adapter
                    )

    def answer_metadata(self, text: str) -> Mapping[str, Any]:
        """``metadata["adapter"]``: the stance adapter as a string, or ``None``."""
        return {"adapter": None if self.adapter is None else str(self.adapter)}

    def make_answer(
        self, query: Query, completion: Completion, *, confidence: float, latency_s: float
    ) -> Answer:
        """The ``LLMExpert`` answer plus ``metadata["adapter_applied"]``."""
        answer = super().make_answer(query, completion, confidence=confidence, latency_s=latency_s)
        applied = completion.model in self._adapted_names
        return replace(answer, metadata={**answer.metadata, "adapter_applied": applied})


def _adapted(backend: Backend, adapter: str) -> Backend | None:
    """``backend`` with the LoRA ``adapter`` applied, behind the same retry guard and residency as
    the original; ``None`` unless it is a ``TransformersBackend`` without an adapter of its own."""
    if isinstance(backend, GuardedBackend):
        inner = _adapted(backend.inner, adapter)
        return None if inner is None else backend.rewrapped(inner)
    if isinstance(backend, ResidentBackend):
        inner = _adapted(backend.inner, adapter)
        return None if inner is None else ResidentBackend(inner, backend.residency)
    if isinstance(backend, TransformersBackend) and backend.adapter is None:
        return backend.with_adapter(adapter, merge=True)
    return None


def _adapter_of(backend: Backend) -> str | None:
    """The adapter of the ``TransformersBackend`` under any guard or residency wrapper."""
    while isinstance(backend, GuardedBackend | ResidentBackend):
        backend = backend.inner
    return backend.adapter if isinstance(backend, TransformersBackend) else None
