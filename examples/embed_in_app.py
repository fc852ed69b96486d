"""A pipeline inside another async application: one pipeline, many concurrent requests.

The experts here answer through a hosted model when OPENAI_API_KEY is set, and otherwise through
litellm's offline mock responses, so the example runs anywhere.

Run: python examples/embed_in_app.py
"""

from __future__ import annotations

import logging
import os

import anyio
import structlog

from moe_agents import (
    CodingExpert,
    KnowledgeExpert,
    LiteLLMBackend,
    Pipeline,
    ReasoningExpert,
    Router,
    RouterConfig,
    VotingAggregator,
)


def backend() -> LiteLLMBackend:
    if os.environ.get("OPENAI_API_KEY"):
        return LiteLLMBackend("openai/gpt-4o-mini", api_key=os.environ["OPENAI_API_KEY"])
    return LiteLLMBackend(
        "openai/gpt-4o-mini", api_key="sk-offline", params={"mock_response": "Final answer: 42"}
    )


async def handle_request(pipeline: Pipeline, request_id: int, text: str) -> None:
    """What a web handler would do: run, then keep result.id to attach user feedback later."""
    result = await pipeline.run(text)
    ms = result.timings["total"] * 1000
    print(f"[{request_id}] {result.selection.experts} -> {result.text[:60]!r} ({ms:.0f} ms)")
    await pipeline.feedback(result.id, 1.0)


async def main() -> None:
    shared = backend()  # one client shared by every expert
    pipeline = Pipeline(
        [
            CodingExpert(backends=[shared]),
            ReasoningExpert(backends=[shared]),
            KnowledgeExpert(
                backends=[shared], documents=["Our office is open 9:00-17:00, Monday to Friday."]
            ),
        ],
        router=Router(RouterConfig(top_k=2)),
        aggregator=VotingAggregator(),
    )
    requests = [
        "What is 6 times 7?",
        "Write a Python one-liner that sums a list",
        "When is the office open?",
        "A box holds 7 rows of 6 eggs; how many eggs?",
    ]
    async with pipeline, anyio.create_task_group() as tg:
        for i, text in enumerate(requests):
            tg.start_soon(handle_request, pipeline, i, text)


if __name__ == "__main__":
    # the application decides what to log; the library only emits events
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
