"""A minimal chat loop on the offline default pipeline, using the library directly.

Run: python examples/chat_loop.py   (Ctrl-D to quit)
"""

from __future__ import annotations

import logging

import anyio
import structlog

import moe_agents


async def main() -> None:
    async with moe_agents.load_pipeline(moe_agents.default_config_path()) as pipeline:
        while True:
            try:
                text = await anyio.to_thread.run_sync(input, "you> ")
            except EOFError:
                return
            if not text.strip():
                continue
            stream = pipeline.stream(text)
            async for chunk in stream:
                print(chunk, end="", flush=True)
            assert stream.result is not None
            picked = ", ".join(
                f"{e} ({w:.2f})"
                for e, w in zip(
                    *[stream.result.selection.experts, stream.result.selection.weights], strict=True
                )
            )
            print(f"\n  [answered by {picked}]")


if __name__ == "__main__":
    # the application decides what to log; the library only emits events
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    anyio.run(main)
