"""Conversation memory inside the pipeline: context provision per expert, within its token
budget, recorded in the result; exchanges and feedback remembered; the YAML ``memory:`` section."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from moe_agents import ExpertPolicy, LLMExpert, Pipeline, Query, Router, load_pipeline
from moe_agents.experts.base import Signal
from moe_agents.memory import MemoryConfig, MemoryStore, count_tokens
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug|rust)\b", 0.6),)


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "tell me about yourself")


def make(context_tokens: int = 512, recent_turns: int = 8) -> tuple[Pipeline, FunctionBackend, MemoryStore]:
    def reply(messages: Sequence[Message]) -> str:
        return f"answer to: {str(messages[-1]['content']).splitlines()[-1]}"

    backend = FunctionBackend(reply, name="c")
    encoder = HashingEncoder()
    memory = MemoryStore(MemoryConfig(":memory:", recent_turns=recent_turns), encoder=encoder)
    experts = [
        Coder(backends=[backend], policy=ExpertPolicy(context_tokens=context_tokens)),
        Talker(backends=[FunctionBackend(reply)]),
    ]
    return Pipeline(experts, router=Router(encoder=encoder), memory=memory), backend, memory


async def test_the_expert_sees_the_earlier_turns_of_its_session() -> None:
    p, backend, memory = make()
    first = await p.run(Query("write a python function that reverses a list", session_id="s1"))
    assert first.metadata["context"]["coding"]["turns"] == 0
    second = await p.run(Query("and in rust?", session_id="s1"))
    prompt = backend.calls[-1].prompt
    assert "Earlier in this conversation" in prompt and "reverses a list" in prompt
    assert prompt.rstrip().endswith("and in rust?")
    assert second.metadata["context"]["coding"]["turns"] == 2
    assert [t.role for t in memory.transcript("s1")] == ["user", "assistant", "user", "assistant"]
    other = await p.run(Query("write a python function that sorts", session_id="s2"))
    assert other.metadata["context"]["coding"]["turns"] == 0  # sessions do not mix


async def test_without_a_session_nothing_is_provided_or_remembered() -> None:
    p, _, memory = make()
    result = await p.run("write a python function that reverses a list")
    assert "context" not in result.metadata
    assert memory.sessions() == []


async def test_the_token_budget_holds() -> None:
    p, backend, _ = make(context_tokens=40)
    for i in range(6):
        await p.run(
            Query(
                f"write a python function number {i} that does a rather long list of things", session_id="s"
            )
        )
    result = await p.run(Query("fix the bug in that python function", session_id="s"))
    provided = result.metadata["context"]["coding"]
    assert 0 < provided["tokens"] <= 40
    prompt = backend.calls[-1].prompt
    context = prompt[: prompt.rindex("fix the bug")].strip()
    assert count_tokens(context) <= 40


async def test_relevant_memories_are_recalled_beyond_the_recent_turns() -> None:
    p, backend, _ = make(recent_turns=2)
    await p.run(Query("my python function parse_invoice crashes on empty pdf files", session_id="s"))
    for i in range(8):
        await p.run(Query(f"write a python function that computes fibonacci number {i}", session_id="s"))
    result = await p.run(Query("why does parse_invoice crash on empty files?", session_id="s"))
    assert result.metadata["context"]["coding"]["memories"]
    assert "parse_invoice crashes on empty pdf" in backend.calls[-1].prompt


async def test_feedback_reaches_memory() -> None:
    p, _, memory = make(recent_turns=0)  # no recent buffer: recall sees every exchange
    result = await p.run(Query("write a python function that reverses a list", session_id="s1"))
    await p.feedback(result.id, 1.0)
    [remembered] = memory.recall("s1", "reverse a list in python", k=1)
    assert remembered.reward == 1.0


def test_yaml_memory_section(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            memory: {path: mem.sqlite3, recent_turns: 4, recall_k: 2}
            experts:
              - {name: coding, kind: coding, context_tokens: 256}
              - {name: reasoning, kind: reasoning}
            """
        )
    )
    p = load_pipeline(path)
    assert p.memory is not None and Path(p.memory.path) == tmp_path / "mem.sqlite3"
    assert p.memory.config.recent_turns == 4 and p.memory.config.recall_k == 2
    assert p.experts["coding"].context_tokens == 256
    p.memory.close()
