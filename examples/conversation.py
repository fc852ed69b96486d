"""A conversation with memory, routing momentum, feedback and trust, then the experts ranked.

The experts answer through a hosted model when OPENAI_API_KEY is set, and otherwise through
litellm's offline mock responses, so the example runs anywhere. Memory and trust live in a
temporary folder here; in an app, point them at files that persist.

Run: python examples/conversation.py
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import anyio
import structlog

from moe_agents import (
    CodingExpert,
    KnowledgeExpert,
    LiteLLMBackend,
    Pipeline,
    Query,
    ReasoningExpert,
    Router,
    RouterConfig,
    TrustStore,
)
from moe_agents.memory import MemoryConfig, MemoryStore
from moe_agents.routing import bundled_encoder


def backend() -> LiteLLMBackend:
    if os.environ.get("OPENAI_API_KEY"):
        return LiteLLMBackend("openai/gpt-4o-mini", api_key=os.environ["OPENAI_API_KEY"])
    return LiteLLMBackend(
        "openai/gpt-4o-mini", api_key="sk-offline", params={"mock_response": "Here you go."}
    )


async def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="moe-agents-example-"))
    encoder = bundled_encoder()  # one MiniLM for routing and memory
    shared = backend()
    pipeline = Pipeline(
        [
            CodingExpert(backends=[shared]),
            ReasoningExpert(backends=[shared]),
            KnowledgeExpert(backends=[shared]),
        ],
        router=Router(RouterConfig(), encoder=encoder, trust=TrustStore(folder / "trust.sqlite3")),
        memory=MemoryStore(MemoryConfig(folder / "memory.sqlite3"), encoder=encoder),
    )
    session = "demo-session"
    turns = [
        "Write a Python function that reverses a linked list",
        "and in Rust?",  # a follow-up: momentum nudges it towards the previous turn's expert (capped)
        "what is its time complexity?",
    ]
    async with pipeline:
        for text in turns:
            result = await pipeline.run(Query(text, session_id=session))
            given = result.metadata.get("context", {})
            context = {name: (c["turns"], c["tokens"]) for name, c in given.items()}
            print(
                f"{text!r} -> {result.selection.experts} ({result.selection.mode}); "
                f"context (turns, tokens): {context}"
            )
            await pipeline.feedback(result.id, 1.0)  # a thumbs-up: trust and memory both learn from it
    for rank in pipeline.rank():
        trust = "—" if rank.trust is None else f"{rank.trust:.2f}"
        print(f"{rank.name:10} score {rank.score:.3f}  trust {trust}  calls {rank.calls}")


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
