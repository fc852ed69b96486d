"""``memory``: list, show and forget the sessions of the conversation memory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import MoEError
from ..memory import MemoryConfig, MemoryStore, Turn
from .common import JsonOpt, VerboseOpt, console, err_console, fail, setup_logging, when

app = typer.Typer(help="Conversation memory: the turns and memories of each session.", no_args_is_help=True)

MemoryDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The memory store (default: memory.sqlite3 in the user data folder).", show_default=False
    ),
]


def _memory_store(path: Path) -> MemoryStore:
    """Opens the store at ``path``; a missing file reads as an empty store and is not created."""
    try:
        return MemoryStore(MemoryConfig(path=path if path.exists() else ":memory:"))
    except MoEError as exc:
        raise fail(exc) from None


def _turn_dict(turn: Turn) -> dict[str, Any]:
    return {**dataclasses.asdict(turn), "experts": list(turn.experts)}


@app.command("show")
def show(
    session: Annotated[
        str | None, typer.Argument(help="Show this session's transcript (default: list the sessions).")
    ] = None,
    db: MemoryDbOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """List the sessions with their turn counts and last activity, or show one session's transcript."""
    setup_logging(verbose)
    path = db or MemoryStore.default_path()
    with _memory_store(path) as store:
        try:
            sessions = store.sessions() if session is None else []
            turns = store.transcript(session) if session is not None else []
        except MoEError as exc:
            raise fail(exc) from None
    if session is None:
        if as_json:
            rows = [{"session": s, "turns": n, "last_ts": ts} for s, n, ts in sessions]
            console.print_json(json.dumps(rows))
        elif not sessions:
            err_console.print(f"no sessions recorded in {path}")
        else:
            table = Table("session", "turns", "last activity", box=None)
            for s, n, ts in sessions:
                table.add_row(s, str(n), when(ts))
            console.print(table)
        return
    if as_json:
        console.print_json(json.dumps([_turn_dict(t) for t in turns]))
    elif not turns:
        err_console.print(f"no turns recorded for session {session} in {path}", highlight=False)
    else:
        for t in turns:
            who = f"assistant ({', '.join(t.experts)})" if t.role == "assistant" and t.experts else t.role
            console.print(f"{when(t.ts)}  {who}: {t.text}", markup=False, highlight=False, soft_wrap=True)


@app.command("forget")
def forget(
    session: Annotated[str, typer.Argument(help="The session to forget.")],
    db: MemoryDbOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Delete a session's turns and memories for good (the bytes are removed from the file)."""
    setup_logging(verbose)
    path = db or MemoryStore.default_path()
    if not path.exists():
        err_console.print(f"no turns recorded for session {session} in {path}", highlight=False)
        return
    with _memory_store(path) as store:
        try:
            turns = len(store.transcript(session))
            if turns and not yes:
                typer.confirm(f"Forget session {session} ({turns} turns) in {path}?", abort=True)
            removed = store.forget(session) if turns else 0
        except MoEError as exc:
            raise fail(exc) from None
    console.print(f"removed {removed} rows ({turns} turns) of session {session}", highlight=False)
