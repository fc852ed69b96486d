"""Serving a pipeline on 127.0.0.1 for a test, and the experts the server tests use."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import anyio
import httpx
import uvicorn

from moe_agents import LLMExpert, Pipeline, Router, RouterConfig
from moe_agents.experts.base import Signal
from moe_agents.server import ServerConfig, create_app
from moe_agents.testing import FunctionBackend, HashingEncoder
from moe_agents.types import Message


class Coder(LLMExpert):
    kind = "coding"
    default_exemplars = ("write a python function", "fix this bug in my code", "refactor this class")
    signals = (Signal(r"\b(python|code|function|bug)\b", 0.6),)


class Talker(LLMExpert):
    kind = "talk"
    default_exemplars = ("hello how are you", "what do you think about life", "tell me about yourself")
    signals = (Signal(r"\b(hello|think|life)\b", 0.6),)


class Seer(LLMExpert):
    kind = "seer"
    modalities = frozenset({"image"})
    default_exemplars = ("what is in this picture", "describe this image")


def echo(tag: str):  # a reply function
    def reply(messages: Sequence[Message]) -> str:
        return f"{tag}: {messages[-1]['content']}"

    return reply


def pipeline_of(*experts: LLMExpert, top_k: int = 1, **kwargs: object) -> Pipeline:
    router = kwargs.pop("router", None) or Router(RouterConfig(top_k=top_k), encoder=HashingEncoder())
    return Pipeline(list(experts), router=router, **kwargs)  # type: ignore[arg-type]


def simple(**kwargs: object) -> Pipeline:
    """A coding and a talk expert, echoing the question."""
    return pipeline_of(
        Coder(backends=[FunctionBackend(echo("coding"), name="c")]),
        Talker(backends=[FunctionBackend(echo("talk"), name="t")]),
        **kwargs,
    )


async def eventually(predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Waits until ``predicate()`` holds, polling; ``TimeoutError`` after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        await anyio.sleep(0.01)
    raise TimeoutError(f"still false after {timeout_s} s")


@contextlib.asynccontextmanager
async def served(
    pipeline: Pipeline, config: ServerConfig | None = None, *, wait_ready: bool = True
) -> AsyncIterator[str]:
    """Serves ``pipeline`` on a free loopback port in this event loop; yields the base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(pipeline, config), host="127.0.0.1", port=0, log_level="warning")
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started, timeout_s=20)
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        if wait_ready:
            async with httpx.AsyncClient(base_url=base) as client:
                for _ in range(1500):
                    if (await client.get("/health/ready")).status_code == 200:
                        break
                    await anyio.sleep(0.02)
                else:
                    raise TimeoutError("the server did not get ready in 30 s")
        try:
            yield base
        finally:
            server.should_exit = True
