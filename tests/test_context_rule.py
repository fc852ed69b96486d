"""Context only where it helps: recent turns go to an expert only while they continue into the new
query (``moe_agents.continuity``); what was given, and why, is in ``Result.metadata["context"]``."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from moe_agents import LLMExpert, Pipeline, Query, Router, default_config_path, load_pipeline
from moe_agents.continuity import THRESHOLD, Continuation, continuation
from moe_agents.errors import ConfigError
from moe_agents.experts.base import Signal
from moe_agents.memory import MemoryConfig, MemoryStore, Turn
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message

REVERSE = "Write a Python function that reverses a string"
CODE = "def reverse_string(s: str) -> str:\n    return s[::-1]"


def _turns(*exchanges: tuple[str, str]) -> list[Turn]:
    """Recent turns from ``(user text, expert)`` exchanges, oldest first."""
    out: list[Turn] = []
    for i, (text, expert) in enumerate(exchanges):
        out.append(Turn(2 * i + 1, "user", text, (expert,), None, float(i)))
        out.append(Turn(2 * i + 2, "assistant", f"answer {i}", (expert,), None, float(i)))
    return out


def _sims(*user: float) -> list[float | None]:
    return [s for u in user for s in (u, None)]


class TestContinuation:
    @pytest.mark.parametrize(
        ("expert", "sims", "expected"),
        [
            ("coding", (0.0, 0.0), Continuation(4, "same expert", 0.0)),
            ("reasoning", (0.0, 0.05), Continuation(0, "new topic", 0.05)),
            ("reasoning", (0.0, 0.5), Continuation(2, "similar", 0.5)),
            ("reasoning", (0.5, 0.5), Continuation(4, "similar", 0.5)),
        ],
        ids=["same-expert-keeps-all", "new-topic-keeps-none", "similar-keeps-that-one", "similar-chain"],
    )
    def test_walks_back_while_exchanges_continue(
        self, expert: str, sims: tuple[float, float], expected: Continuation
    ) -> None:
        """Exchanges are kept newest first while the expert answered them or they are similar enough."""
        turns = _turns(("write a parser", "coding"), ("add tests", "coding"))
        assert continuation(turns, expert, _sims(*sims), threshold=0.2) == expected

    def test_a_topic_switch_cuts_off_the_older_topic(self) -> None:
        """After a switch, a follow-up gets the new topic's turns and not the old topic's."""
        turns = _turns(("read a csv with pandas", "coding"), ("What is 17% of 240?", "reasoning"))
        got = continuation(turns, "reasoning", _sims(0.0, 0.05), threshold=0.2)
        assert got == Continuation(2, "same expert", 0.05)
        assert [t.text for t in turns[-got.turns :]] == ["What is 17% of 240?", "answer 1"]

    def test_without_earlier_turns(self) -> None:
        """A session's first query has nothing to continue."""
        assert continuation([], "coding", []) == Continuation(0, "no earlier turns", None)

    def test_threshold_minus_one_gives_every_turn(self) -> None:
        """similarity_threshold -1 is the behaviour before the rule: every recent turn."""
        turns = _turns(("a", "coding"), ("b", "coding"))
        assert continuation(turns, "other", _sims(-0.9, -0.9), threshold=-1.0) == Continuation(
            4, "always", None
        )

    def test_same_expert_can_be_switched_off(self) -> None:
        """With same_expert off, only similarity counts."""
        turns = _turns(
            ("a", "coding"),
        )
        got = continuation(turns, "coding", _sims(0.0), threshold=0.2, same_expert=False)
        assert got == Continuation(0, "new topic", 0.0)

    def test_an_answer_whose_question_left_the_buffer_goes_with_the_expert_rule(self) -> None:
        """A leading assistant turn (its user turn fell out of the buffer) continues only by expert."""
        turns = _turns(("a", "coding"), ("b", "coding"))[1:]
        assert continuation(turns, "coding", [None, 0.0, None], threshold=0.2).turns == 3
        assert continuation(turns, "other", [None, 0.9, None], threshold=0.2).turns == 2

    def test_one_similarity_per_turn(self) -> None:
        """A similarity list that does not match the turns is a programming error."""
        with pytest.raises(ValueError, match="2 turns but 1"):
            continuation(_turns(("a", "coding")), "coding", [0.0])


def _reply(messages: Sequence[Message]) -> str:
    prompt = str(messages[-1]["content"])
    return CODE if "reverses a string" in prompt.splitlines()[-1] else "a reply"


@pytest.fixture(scope="module")
def offline_default() -> tuple[Pipeline, FunctionBackend]:
    """The shipped offline default (its real MiniLM router, memory with recent_turns 6) with a
    function in place of the SmolLM2 model."""
    backend = FunctionBackend(_reply, name="smollm2")
    pipeline = load_pipeline(default_config_path(), backends={"smollm2": backend})
    assert pipeline.memory is not None and pipeline.memory.config.recent_turns == 6
    return pipeline, backend


@pytest.mark.slow
class TestDefaultPipelineReplay:
    async def test_a_new_topic_gets_no_coding_turn(
        self, offline_default: tuple[Pipeline, FunctionBackend]
    ) -> None:
        """The issue's chat: "What is 17 times 23?" after the reverse-string question goes to
        reasoning without the previous turn's code, and the metadata says so and why."""
        p, backend = offline_default
        session = uuid.uuid4().hex
        first = await p.run(Query(REVERSE, session_id=session))
        assert first.selection.experts == ("coding",)
        assert first.metadata["context"]["coding"]["reason"] == "no earlier turns"
        second = await p.run(Query("What is 17 times 23?", session_id=session))
        assert second.selection.experts == ("reasoning",)
        given = second.metadata["context"]["reasoning"]
        assert (given["turns"], given["reason"]) == (0, "new topic")
        assert given["similarity"] < THRESHOLD
        prompt = backend.calls[-1].prompt
        assert "reverse_string" not in prompt and "Earlier in this conversation" not in prompt

    async def test_a_follow_up_gets_the_previous_turn(
        self, offline_default: tuple[Pipeline, FunctionBackend]
    ) -> None:
        """ "Now make it handle unicode" after the reverse-string question gets that exchange."""
        p, backend = offline_default
        session = uuid.uuid4().hex
        await p.run(Query(REVERSE, session_id=session))
        second = await p.run(Query("Now make it handle unicode", session_id=session))
        assert second.selection.experts == ("coding",)
        given = second.metadata["context"]["coding"]
        assert (given["turns"], given["reason"]) == (2, "same expert")
        assert given["tokens"] > 0 and given["memories"] == []
        prompt = backend.calls[-1].prompt
        assert "Earlier in this conversation" in prompt and "reverse_string" in prompt


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug|rust)\b", 0.6),)


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "tell me about yourself")


class CountingEncoder(HashingEncoder):
    """Counts how often each text is encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        return super().encode(texts)


class TestPipelineWiring:
    @staticmethod
    def make(encoder: HashingEncoder, **config: object) -> Pipeline:
        backend = FunctionBackend(lambda m: "ok", name="c")
        memory = MemoryStore(MemoryConfig(":memory:", **config), encoder=encoder)  # type: ignore[arg-type]
        experts = [Coder(backends=[backend]), Talker(backends=[FunctionBackend(lambda m: "hi")])]
        return Pipeline(experts, router=Router(encoder=encoder), memory=memory)

    async def test_the_query_is_encoded_once(self) -> None:
        """Routing's embedding of the query serves the rule and recall: no second encoding."""
        encoder = CountingEncoder()
        p = self.make(encoder)
        await p.run(Query("write a python function that parses dates", session_id="s"))
        await p.run(Query("fix the bug in that python function", session_id="s"))
        assert encoder.seen.count("fix the bug in that python function") == 1

    async def test_threshold_minus_one_restores_every_turn(self) -> None:
        """With similarity_threshold -1 a new topic still gets the recent turns (the old behaviour)."""
        p = self.make(HashingEncoder(), similarity_threshold=-1.0)
        await p.run(Query("write a python function that parses dates", session_id="s"))
        result = await p.run(Query("hello how are you", session_id="s"))
        assert result.selection.experts == ("talk",)
        given = result.metadata["context"]["talk"]
        assert (given["turns"], given["reason"], given["similarity"]) == (2, "always", None)

    async def test_a_new_topic_gets_no_turns_by_default(self) -> None:
        """By default the same new topic gets none, with its similarity recorded."""
        p = self.make(HashingEncoder())
        await p.run(Query("write a python function that parses dates", session_id="s"))
        result = await p.run(Query("hello how are you", session_id="s"))
        given = result.metadata["context"]["talk"]
        assert (given["turns"], given["reason"], given["similarity"]) == (0, "new topic", 0.0)


class TestRecallFloor:
    def test_memories_below_the_threshold_are_not_recalled(self) -> None:
        """A memory needs the similarity threshold, not just a positive similarity."""
        with MemoryStore(MemoryConfig(":memory:", recent_turns=0), encoder=HashingEncoder()) as s:
            s.add_exchange(
                "s", "my dog Rex is allergic to chicken and many other foods", "noted", experts=["k"]
            )
            assert len(s.recall("s", "Rex", k=3)) == 1
        floor = MemoryConfig(":memory:", recent_turns=0, similarity_threshold=0.9)
        with MemoryStore(floor, encoder=HashingEncoder()) as s:
            s.add_exchange(
                "s", "my dog Rex is allergic to chicken and many other foods", "noted", experts=["k"]
            )
            assert s.recall("s", "Rex", k=3) == []


class TestConfig:
    def test_yaml_memory_settings(self, tmp_path: Path) -> None:
        """memory.similarity_threshold and memory.same_expert reach the store's config."""
        path = tmp_path / "p.yaml"
        path.write_text(
            textwrap.dedent(
                """\
                memory: {path: ":memory:", similarity_threshold: 0.3, same_expert: false}
                experts:
                  - {name: coding, kind: coding}
                  - {name: reasoning, kind: reasoning}
                """
            )
        )
        p = load_pipeline(path)
        assert p.memory is not None
        assert (p.memory.config.similarity_threshold, p.memory.config.same_expert) == (0.3, False)
        p.memory.close()

    def test_defaults_are_the_fitted_rule(self) -> None:
        """Without settings, the fitted threshold and the same-expert arm are on."""
        assert (MemoryConfig().similarity_threshold, MemoryConfig().same_expert) == (THRESHOLD, True)

    @pytest.mark.parametrize("value", [1.5, -2.0, "high"], ids=["above-1", "below-minus-1", "not-a-number"])
    def test_threshold_outside_minus_one_to_one_is_rejected(self, value: object) -> None:
        """The threshold is a cosine similarity: in [-1, 1]."""
        with pytest.raises(ConfigError, match="similarity_threshold"):
            MemoryConfig(similarity_threshold=value)  # type: ignore[arg-type]
