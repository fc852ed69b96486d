"""The live registry behind a pipeline: register, remove, replace, disable — under load, losing no
request — and its events."""

from __future__ import annotations

import random
from collections.abc import Sequence

import anyio
import pytest

from moe_agents import ConfigError, ExpertPolicy, LLMExpert, MoEError, Pipeline, Router, RouterConfig
from moe_agents.experts.base import Signal
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug)\b", 0.6),)


class Mathy(LLMExpert):
    kind = "maths"
    default_exemplars = ("solve this equation", "what is 12 times 7", "compute the probability")
    signals = (Signal(r"\b(solve|equation|times|sum)\b|\d", 0.6),)


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "tell me about yourself")
    signals = (Signal(r"\b(hello|think|life)\b", 0.6),)


def echo(tag: str, latency_s: float = 0.0) -> FunctionBackend:
    def reply(messages: Sequence[Message]) -> str:
        return f"{tag}: {messages[-1]['content']}"

    return FunctionBackend(reply, name=tag, latency_s=latency_s)


def make(latency_s: float = 0.0) -> Pipeline:
    experts = [Coder(backends=[echo("coding", latency_s)]), Talker(backends=[echo("talk", latency_s)])]
    return Pipeline(experts, router=Router(RouterConfig(), encoder=HashingEncoder()))


async def test_register_makes_an_expert_routable() -> None:
    p = make()
    assert (await p.route("solve the equation 2x + 3 = 7")).experts != ("maths",)
    p.register(Mathy(backends=[echo("maths")]))
    assert (await p.route("solve the equation 2x + 3 = 7")).experts == ("maths",)  # gate refitted
    with pytest.raises(ConfigError, match="exists already"):
        p.register(Mathy(backends=[echo("maths")]))


async def test_remove_lets_running_requests_finish_on_the_old_expert() -> None:
    release = anyio.Event()

    async def held(messages: Sequence[Message]) -> str:
        await release.wait()
        return "old coder"

    p = Pipeline(
        [Coder(backends=[FunctionBackend(held)]), Talker(backends=[echo("talk")])],
        router=Router(encoder=HashingEncoder()),
    )
    results = []

    async def ask() -> None:
        results.append(await p.run("fix the bug in my python function"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.sleep(0.05)
        removed = p.remove("coding")
        assert removed.name == "coding" and "coding" not in p.experts
        release.set()
    assert results[0].text == "old coder"
    assert (await p.route("fix the bug in my python function")).experts == ("talk",)


async def test_replace_swaps_for_new_requests_only() -> None:
    release = anyio.Event()

    async def held(messages: Sequence[Message]) -> str:
        await release.wait()
        return "v1"

    p = Pipeline(
        [Coder(backends=[FunctionBackend(held)]), Talker(backends=[echo("talk")])],
        router=Router(encoder=HashingEncoder()),
    )
    results = []

    async def ask() -> None:
        results.append(await p.run("fix the bug in my python function"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.sleep(0.05)
        p.replace("coding", Coder(backends=[FunctionBackend(lambda m: "v2")]))
        release.set()
    assert results[0].text == "v1"
    assert (await p.run("fix the bug in my python function")).text == "v2"
    with pytest.raises(ConfigError, match="named 'talk'"):
        p.replace("coding", Talker())


async def test_disable_takes_an_expert_out_of_routing_visibly() -> None:
    p = make()
    p.disable("coding", reason="success rate 0.31 below 0.5")
    selection = await p.route("fix the bug in my python function")
    assert selection.experts == ("talk",)
    assert selection.scores["coding"].note == "disabled: success rate 0.31 below 0.5"
    with pytest.raises(ConfigError, match="last expert"):
        p.disable("talk")
    p.enable("coding")
    assert (await p.route("fix the bug in my python function")).experts == ("coding",)


async def test_a_new_policy_resizes_the_limiter() -> None:
    """set_policy takes effect for the next requests: a new max_load bounds the concurrent calls."""
    running = peak = 0

    async def tracked(messages: Sequence[Message]) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.01)
        running -= 1
        return "ok"

    coder = Coder(backends=[FunctionBackend(tracked)], policy=ExpertPolicy(max_load=3))
    p = Pipeline([coder, Talker(backends=[echo("talk")])], router=Router(encoder=HashingEncoder()))

    async def burst() -> int:
        nonlocal peak
        peak = 0
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(p.run, "fix the bug in my python function")
        return peak

    assert await burst() == 3
    p.set_policy("coding", ExpertPolicy(max_load=1))
    assert await burst() == 1
    assert p.experts["coding"].max_load == 1
    with pytest.raises(AttributeError):
        p.experts["coding"].max_load = 5  # type: ignore[misc]


async def test_registry_events_are_published() -> None:
    p = make()
    seen = []
    async with p.events.subscribe() as events:
        p.register(Mathy(backends=[echo("maths")]))
        p.disable("maths", reason="test")
        p.enable("maths")
        p.set_policy("maths", ExpertPolicy(max_load=2))
        p.remove("maths")
        with anyio.fail_after(1):
            async for event in events:
                seen.append((event.kind, event.data["expert"]))
                if len(seen) == 5:
                    break
    assert seen == [
        ("expert.registered", "maths"),
        ("expert.disabled", "maths"),
        ("expert.enabled", "maths"),
        ("expert.policy_changed", "maths"),
        ("expert.removed", "maths"),
    ]


async def test_changes_under_concurrent_load_lose_no_request() -> None:
    """300 requests in flight while experts are registered, replaced, removed and disabled at
    random: every request ends with a result or a typed error."""
    p = make(latency_s=0.01)
    rng = random.Random(0)
    outcomes: list[str] = []
    prompts = ["fix the bug in my python function", "hello how are you", "what is 12 times 7"]

    async def ask(i: int) -> None:
        try:
            result = await p.run(prompts[i % 3])
        except MoEError as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("answered" if result.text else "empty")

    async def churn() -> None:
        for _ in range(30):
            await anyio.sleep(0.005)
            op = rng.choice(["register", "remove", "replace", "disable", "enable"])
            try:
                if op == "register":
                    p.register(Mathy(backends=[echo("maths", 0.01)]))
                elif op == "remove":
                    p.remove("maths")
                elif op == "replace":
                    p.replace("talk", Talker(backends=[echo("talk", 0.01)]))
                elif op == "disable":
                    p.disable("coding", reason="churn")
                else:
                    p.enable("coding")
            except ConfigError:
                pass  # e.g. removing an expert that is not registered right now

    async with anyio.create_task_group() as tg:
        tg.start_soon(churn)
        for i in range(300):
            tg.start_soon(ask, i)
    assert len(outcomes) == 300
    assert outcomes.count("answered") == 300, sorted(set(outcomes))
