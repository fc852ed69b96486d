"""Trust inside the pipeline: contexts, feedback and scorers into the store, trust-first routing,
presets, session budgets, and the YAML ``trust:`` section."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from moe_agents import (
    ConfigError,
    ExpertPolicy,
    LLMExpert,
    Pipeline,
    Query,
    Router,
    RouterConfig,
    load_pipeline,
)
from moe_agents.budget import BudgetConfig
from moe_agents.experts.base import Signal
from moe_agents.routing.context import ContextConfig
from moe_agents.routing.permission import SelectConfig
from moe_agents.routing.trust import TrustStore
from moe_agents.scorers import final_answer_stated, python_parses
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Answer, Message, Usage


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug)\b", 0.6),)


class Helper(LLMExpert):
    kind = "helper"
    default_exemplars = ("help me with anything", "general question", "answer this")
    signals = (Signal(r"\b(python|code|help)\b", 0.3),)


def echo(tag: str):
    def reply(messages: Sequence[Message]) -> str:
        return f"{tag}: {messages[-1]['content']}"

    return reply


def make(
    store: TrustStore | None,
    *,
    top_k: int = 1,
    context: str = "gate",
    budget: BudgetConfig | None = None,
    coder_price: float = 0.0,
    helper_scorer=None,
) -> Pipeline:
    coder = Coder(
        backends=[FunctionBackend(echo("coding"), name="c")], policy=ExpertPolicy(price=coder_price)
    )
    helper = Helper(
        backends=[FunctionBackend(echo("helper"), name="h")], policy=ExpertPolicy(scorer=helper_scorer)
    )
    config = RouterConfig(
        top_k=top_k, selection=SelectConfig(min_evidence=2), context=ContextConfig(kind=context, clusters=2)
    )
    router = Router(config, encoder=HashingEncoder(), trust=store)
    return Pipeline([coder, helper], router=router, budget=budget)


async def test_without_a_store_nothing_changes() -> None:
    pipeline = make(None)
    result = await pipeline.run("please fix the bug in this python function")
    assert result.selection.mode == "router"
    assert result.selection.context is None
    await pipeline.feedback(result.id, 1.0)  # no store: only the in-memory stats


async def test_feedback_lands_in_the_store_under_the_selection_context() -> None:
    with TrustStore(":memory:") as store:
        pipeline = make(store)
        result = await pipeline.run("please fix the bug in this python function")
        assert result.selection.context is not None and result.selection.context.startswith("gate:")
        await pipeline.feedback(result.id, 0.9)
        [stat] = store.stats()
        assert (stat.expert, stat.context, stat.evidence) == ("coding", result.selection.context, 1)
        assert store.log()[0]["result_id"] == result.id


async def test_trust_takes_over_once_two_experts_have_evidence() -> None:
    with TrustStore(":memory:") as store:
        pipeline = make(store)
        query = "please fix the bug in this python function"
        first = await pipeline.route(query)
        assert first.mode == "router_explore" and first.experts == ("coding",)
        for _ in range(3):  # the router's favourite keeps failing here, the other keeps succeeding
            store.record("coding", first.context, 0.0)
            store.record("helper", first.context, 1.0)
        later = await pipeline.route(query)
        assert later.mode == "trust_driven"
        assert later.experts == ("helper",)
        assert later.scores["coding"].trust is not None and later.scores["coding"].trust < 0.5


async def test_cluster_contexts_come_from_the_exemplars() -> None:
    with TrustStore(":memory:") as store:
        pipeline = make(store, context="cluster")
        selection = await pipeline.route("refactor this class")
        assert pipeline.router.clusters is not None
        assert selection.context in pipeline.router.clusters.names


async def test_scorer_scores_update_trust() -> None:
    seen: list[str] = []

    def scorer(query: Query, answer: Answer) -> float:
        seen.append(answer.text)
        return 0.25

    with TrustStore(":memory:") as store:
        pipeline = make(store, top_k=2, helper_scorer=scorer)
        result = await pipeline.run("help me with python code")
        assert seen and seen[0].startswith("helper:")
        rows = store.log()
        assert [(r["expert"], r["score"], r["source"]) for r in rows] == [("helper", 0.25, "scorer")]
        assert rows[0]["result_id"] == result.id


async def test_a_broken_scorer_is_logged_and_ignored() -> None:
    def broken(query: Query, answer: Answer) -> float:
        raise ValueError("boom")

    with TrustStore(":memory:") as store:
        result = await make(store, top_k=2, helper_scorer=broken).run("help me with python code")
        assert "helper" in result.answers
        assert store.log() == []


async def test_presets_pick_one_expert() -> None:
    with TrustStore(":memory:") as store:
        pipeline = make(store, top_k=2, coder_price=1.0)
        query = "help me fix this python code"
        assert len((await pipeline.run(query)).selection.experts) == 2
        assert (await pipeline.run(query, preset="focus")).selection.experts == ("coding",)
        # rest: the cheapest capable expert; the helper is free
        assert (await pipeline.run(query, preset="rest")).selection.experts == ("helper",)


async def test_an_exhausted_session_budget_leaves_only_cheap_experts() -> None:
    def costly(messages: Sequence[Message]):
        from moe_agents.backends.base import Completion

        return Completion("coding: done", "m", Usage(10, 10, cost_usd=0.6))

    coder = Coder(backends=[FunctionBackend(costly, name="c")], policy=ExpertPolicy(price=0.5))
    helper = Helper(backends=[FunctionBackend(echo("helper"), name="h")])
    router = Router(RouterConfig(selection=SelectConfig(cost_weight=0.0)), encoder=HashingEncoder())
    pipeline = Pipeline([coder, helper], router=router, budget=BudgetConfig(usd=0.5))
    query = Query("please fix the bug in this python function", session_id="s1")
    assert (await pipeline.run(query)).selection.experts == ("coding",)
    assert pipeline.budgets.exhausted("s1")
    after = await pipeline.run(query)
    assert after.selection.experts == ("helper",)
    assert "budget" in (after.selection.scores["coding"].note or "")
    other = await pipeline.run(Query(query.text, session_id="s2"))  # budgets are per session
    assert other.selection.experts == ("coding",)


def test_builtin_scorers() -> None:
    q = Query("x")
    assert python_parses(q, Answer("e", "```python\ndef f():\n    return 1\n```")) == 1.0
    assert python_parses(q, Answer("e", "```python\ndef f(:\n```\n```python\nx = 1\n```")) == 0.5
    assert python_parses(q, Answer("e", "no code here")) is None
    assert final_answer_stated(q, Answer("e", "so\nFinal answer: 42")) == 1.0
    assert final_answer_stated(q, Answer("e", "I am not sure")) == 0.0


YAML = """\
router:
  top_k: 1
trust:
  path: {path}
  min_evidence: 4
  epsilon: 0.1
  hysteresis: 0.3
  decay: 0.9
  context: {{kind: cluster, clusters: 4}}
  budget: {{usd: 2.5, cheap_price: 0.01}}
experts:
  - name: coding
    kind: coding
    price: 0.02
    scorer: {scorer}
  - name: reasoning
    kind: reasoning
"""


def test_yaml_trust_section(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(YAML.format(path="trust.db", scorer="python_parses")))
    pipeline = load_pipeline(path)
    router = pipeline.router
    assert router.trust is not None and Path(router.trust.path) == tmp_path / "trust.db"
    assert router.trust.decay == 0.9
    assert router.config.selection == SelectConfig(min_evidence=4, epsilon=0.1, hysteresis=0.3)
    assert router.config.context.kind == "cluster" and router.config.context.clusters == 4
    assert pipeline.budgets.config.usd == 2.5 and pipeline.budgets.config.cheap_price == 0.01
    assert pipeline.experts["coding"].price == 0.02
    assert pipeline.experts["coding"].scorer is python_parses
    router.trust.close()


def test_yaml_unknown_scorer_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(YAML.format(path='":memory:"', scorer="vibes")))
    with pytest.raises(ConfigError, match=r"unknown scorer 'vibes'.*python_parses") as info:
        load_pipeline(path)
    assert info.value.line is not None and "scorer" in str(info.value)


def test_yaml_bad_trust_values_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(YAML.format(path='":memory:"', scorer="non_empty")).replace("0.1", "1.5"))
    with pytest.raises(ConfigError, match="epsilon"):
        load_pipeline(path)
