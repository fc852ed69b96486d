"""``ask`` (one request) and ``chat`` (an interactive, streaming conversation)."""

from __future__ import annotations

import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Annotated

import anyio
import typer

from ..errors import RunError
from ..pipeline import Pipeline
from ..types import Query, Result
from .common import ConfigOpt, JsonOpt, VerboseOpt, console, err_console, load, open_pipeline, run, setup
from .selection import attachments, scores_table, selection_line

CHAT_HELP = """Commands: /route TEXT (show the routing), /feedback good|bad (rate the last answer),
/new (start a new conversation), /experts, /help, /quit. Anything else is a request."""


def ask(
    text: Annotated[str, typer.Argument(help="The request.")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="Attach an image (repeatable).")] = None,
    audio: Annotated[list[Path] | None, typer.Option("--audio", help="Attach audio (repeatable).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Answer one request and exit."""
    setup(verbose)
    query = Query(text, attachments=attachments(image, audio))
    pipeline = load(config)

    async def go() -> Result:
        async with AsyncExitStack() as stack:
            p = await open_pipeline(stack, pipeline, quiet=as_json)
            return await p.run(query)

    result = run(go)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    err_console.print(selection_line(result.selection))
    for name, error in result.errors.items():
        err_console.print(f"[yellow]{name} failed:[/] {error}", highlight=False)
    console.print(result.text, markup=False, highlight=False)


def chat(config: ConfigOpt = None, verbose: VerboseOpt = False) -> None:
    """Chat with the mixture (streams answers; offline on the default configuration)."""
    setup(verbose)
    pipeline = load(config)

    async def go() -> None:
        async with AsyncExitStack() as stack:
            p = await open_pipeline(stack, pipeline)
            console.print(f"[bold]moe-agents[/] — experts: {', '.join(p.experts)}. {CHAT_HELP}")
            last: Result | None = None
            session = uuid.uuid4().hex[:12]  # ties the turns together: memory and routing momentum
            while True:
                try:
                    line = (await anyio.to_thread.run_sync(console.input, "[bold cyan]you>[/] ")).strip()
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    return
                if not line:
                    continue
                if line in ("/quit", "/exit", "/q"):
                    return
                if line == "/help":
                    console.print(CHAT_HELP)
                elif line == "/new":
                    p.router.momentum.forget(session)
                    session, last = uuid.uuid4().hex[:12], None
                    console.print(f"[dim]new conversation ({session})[/]")
                elif line == "/experts":
                    console.print(", ".join(p.experts))
                elif line.startswith("/route"):
                    text = line.removeprefix("/route").strip()
                    if not text:
                        console.print("usage: /route TEXT")
                        continue
                    selection = await p.route(Query(text, session_id=session))
                    console.print(selection_line(selection))
                    console.print(scores_table(selection))
                elif line.startswith("/feedback"):
                    verdict = line.removeprefix("/feedback").strip()
                    if last is None or verdict not in ("good", "bad"):
                        console.print("usage: /feedback good|bad (after an answer)")
                        continue
                    await p.feedback(last.id, 1.0 if verdict == "good" else 0.0)
                    console.print(f"[dim]recorded {verdict} for {', '.join(last.answers)}[/]")
                elif line.startswith("/"):
                    console.print(f"unknown command {line.split()[0]}. {CHAT_HELP}")
                else:
                    last = await _chat_turn(p, Query(line, session_id=session)) or last

    run(go)


async def _chat_turn(pipeline: Pipeline, text: Query) -> Result | None:
    """Routes, streams the answer, and reports failed experts; errors end the turn, not the chat."""
    try:
        stream = pipeline.stream(text)
        async for chunk in stream:
            if stream.selection is not None:
                console.print(selection_line(stream.selection), style="dim")
                stream.selection = None  # shown once, before the answer
            console.print(chunk, end="", markup=False, highlight=False, soft_wrap=True)
        console.print()
        result = stream.result
    except RunError as exc:
        console.print(f"\n[bold red]error:[/] {exc}", highlight=False)
        return None
    if result is not None:
        for name, error in result.errors.items():
            console.print(f"[yellow]{name} failed:[/] {error}", highlight=False)
    return result
