"""Management wired into a pipeline: A/B tests, health checks, scaling and removal, ranking, YAML
and the CLI."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from typer.testing import CliRunner

from moe_agents import ConfigError, LLMExpert, Pipeline, Query, Router, load_pipeline
from moe_agents.cli import app
from moe_agents.errors import BackendError
from moe_agents.experts.base import Signal
from moe_agents.management import ABTest, HealthPolicy, ScalingPolicy
from moe_agents.management.manager import ManagementConfig
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message

CODE = "please fix the bug in this python function"


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug)\b", 0.6),)


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "tell me about yourself")


def echo(tag: str) -> FunctionBackend:
    def reply(messages: Sequence[Message]) -> str:
        return f"{tag} answers"

    return FunctionBackend(reply, name=tag)


def make(management: ManagementConfig, **backends: FunctionBackend) -> Pipeline:
    experts = [
        Coder("coding", backends=[backends.get("coding", echo("coding"))]),
        Coder("coding-b", backends=[backends.get("coding-b", echo("coding-b"))], exemplars=["x y z"]),
        Talker(backends=[backends.get("talk", echo("talk"))]),
    ]
    return Pipeline(experts, router=Router(encoder=HashingEncoder()), management=management)


async def test_ab_split_holds_and_feedback_is_compared() -> None:
    p = make(ManagementConfig(ab_tests=(ABTest("b", "coding", "coding-b", fraction=0.3, seed=1),)))
    direct = await p.route(CODE)
    assert "coding-b" not in direct.experts  # the treatment is never routed to directly
    assert "A/B treatment" in (direct.scores["coding-b"].note or "")
    served = []
    for i in range(1000):
        result = await p.run(Query(CODE, session_id=f"user-{i}"))
        served.append(result.answer.expert)
        await p.feedback(result.id, 0.9 if result.answer.expert == "coding-b" else 0.6)
    share = served.count("coding-b") / len(served)
    assert abs(share - 0.3) < 0.05
    again = await p.run(Query(CODE, session_id="user-7"))
    assert again.answer.expert == served[7]  # sticky per session
    assert p.manager is not None
    report = p.manager.ab.report("b")
    assert report.difference == pytest.approx(0.3) and report.significant


async def test_unhealthy_experts_leave_routing_until_they_recover() -> None:
    state = {"up": False}

    def reply(messages: Sequence[Message]) -> str:
        if not state["up"]:
            raise BackendError("connection refused")
        return "ok"

    policy = HealthPolicy(interval_s=60, idle_s=0.0, failures_to_unhealthy=1, successes_to_healthy=1)
    p = make(ManagementConfig(health=policy), coding=FunctionBackend(reply, name="c"))
    assert p.manager is not None and p.manager.health is not None
    await p.manager.health.check(["coding"])
    selection = await p.route(CODE)
    assert "coding" not in selection.experts
    assert selection.scores["coding"].note == "unhealthy: failed its health checks"
    state["up"] = True
    await p.manager.health.check(["coding"])
    assert (await p.route(CODE)).experts[0] in ("coding", "coding-b")


async def test_busy_good_experts_scale_up_and_poor_ones_are_disabled() -> None:
    policy = ScalingPolicy(max_instances=3, window=2, scale_up_load=0.5, underperforming_window=3)
    p = make(ManagementConfig(auto_scale=True, remove_underperforming=True, scaling=policy))
    assert p.manager is not None
    coder, talker = p.experts["coding"], p.experts["talk"]
    coder.stats.current_load = coder.max_load  # busy and successful
    talker.stats.failures = 10  # success rate 0
    events = []
    async with p.events.subscribe() as sub:
        for _ in range(4):
            p.manager.check_scaling()
        with anyio.move_on_after(0.2):
            async for event in sub:
                events.append((event.kind, event.data["expert"]))
    coder.stats.current_load = 0
    assert ("scale.up", "coding") in events
    assert p.manager.instances["coding"] >= 2
    assert p.roster.lineup()["coding"].limiter.total_tokens == coder.max_load * p.manager.instances["coding"]
    assert "talk" in p.disabled and ("expert.disabled", "talk") in events


async def test_rank_uses_stats_and_trust(tmp_path: Path) -> None:
    p = make(ManagementConfig())
    p.experts["talk"].stats.failures = 3
    assert p.rank()[-1].name == "talk"


def test_yaml_management_and_ab_tests(tmp_path: Path) -> None:
    text = """\
    trust: {path: trust.db}
    management:
      ranking: {success: 0.6, headroom: 0.2, latency: 0.2}
      auto_scale: true
      scaling: {max_instances: 2}
      health: {interval_s: 5, idle_s: 1}
    ab_tests:
      - {name: v2, control: coding, treatment: coding2, fraction: 0.25}
    experts:
      - {name: coding, kind: coding}
      - {name: coding2, kind: coding}
      - {name: reasoning, kind: reasoning}
    """
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    p = load_pipeline(path)
    assert p.manager is not None
    cfg = p.manager.config
    assert cfg.auto_scale and cfg.scaling.max_instances == 2 and cfg.health is not None
    assert cfg.ranking.success == 0.6 and cfg.ab_tests[0].fraction == 0.25
    assert p.router.trust is not None
    for name, score in [("coding", 0.4), ("coding2", 0.9)] * 30:
        p.router.trust.record(name, "gate:coding", score, result_id="r")
    p.router.trust.close()
    result = CliRunner().invoke(app, ["ab", "report", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "difference (treatment − control) +0.500" in result.output and "significant" in result.output
    ranked = load_pipeline(path).rank()
    assert ranked[0].name == "coding2" and ranked[0].trust == pytest.approx(0.9, abs=0.02)
    stats = CliRunner().invoke(app, ["experts", "--stats", "--config", str(path)], env={"COLUMNS": "200"})
    assert stats.exit_code == 0, stats.output
    assert stats.output.index("coding2") < stats.output.index("reasoning")

    path.write_text(textwrap.dedent(text).replace("treatment: coding2", "treatment: nobody"))
    with pytest.raises(ConfigError, match="'nobody' is not an expert") as info:
        load_pipeline(path)
    assert info.value.line is not None
