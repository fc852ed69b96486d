"""``trust``: show, reset and export the persistent trust store."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import MoEError
from ..routing.trust import TrustStore
from .common import JsonOpt, VerboseOpt, console, err_console, fail, setup_logging, when

app = typer.Typer(
    help="The persistent trust store: how well each expert did in each context.", no_args_is_help=True
)

DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The trust store (default: trust.sqlite3 in the user data folder).", show_default=False
    ),
]
ExpertOpt = Annotated[str | None, typer.Option("--expert", help="Only this expert.", show_default=False)]
ContextOpt = Annotated[str | None, typer.Option("--context", help="Only this context.", show_default=False)]


class ExportFormat(StrEnum):
    """File formats of ``trust export``."""

    JSONL = "jsonl"
    CSV = "csv"


def _trust_store(path: Path) -> TrustStore:
    """Opens the store at ``path``; a missing file reads as an empty store and is not created."""
    try:
        return TrustStore(path if path.exists() else ":memory:")
    except MoEError as exc:
        raise fail(exc) from None


def _filters(expert: str | None, context: str | None) -> str:
    parts = [f"expert {expert}" if expert else "", f"context {context}" if context else ""]
    return " and ".join(p for p in parts if p) or "every expert and context"


@app.command("show")
def show(
    db: DbOpt = None,
    expert: ExpertOpt = None,
    context: ContextOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show trust per expert and context, with the evidence behind it."""
    setup_logging(verbose)
    path = db or TrustStore.default_path()
    with _trust_store(path) as store:
        try:
            stats = store.stats(expert, context)
        except MoEError as exc:
            raise fail(exc) from None
    if as_json:
        console.print_json(json.dumps([dataclasses.asdict(s) for s in stats]))
        return
    if not stats:
        err_console.print(f"no trust recorded for {_filters(expert, context)} in {path}")
        return
    table = Table("expert", "context", "trust", "evidence", "updated", box=None)
    for s in stats:
        table.add_row(s.expert, s.context, f"{s.trust:.3f}", str(s.evidence), when(s.updated_at))
    console.print(table)


@app.command("reset")
def reset(
    db: DbOpt = None,
    expert: ExpertOpt = None,
    context: ContextOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Forget the trust (and its feedback log) of matching experts and contexts."""
    setup_logging(verbose)
    path = db or TrustStore.default_path()
    what = _filters(expert, context)
    with _trust_store(path) as store:
        try:
            matching = len(store.stats(expert, context))
            if matching and not yes:
                typer.confirm(f"Forget {matching} trust entries for {what} in {path}?", abort=True)
            removed = store.reset(expert, context) if matching else 0
        except MoEError as exc:
            raise fail(exc) from None
    console.print(f"removed {removed} trust entries for {what}")


@app.command("export")
def export(
    db: DbOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write here (default: stdout).", show_default=False)
    ] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="File format.")] = ExportFormat.JSONL,
    feedback_log: Annotated[
        bool, typer.Option("--log", help="Export the feedback log (one row per score), not the stats.")
    ] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export the trust stats (or the feedback log) as JSON Lines or CSV."""
    setup_logging(verbose)
    with _trust_store(db or TrustStore.default_path()) as store:
        try:
            n = store.export(
                out if out is not None else sys.stdout,
                fmt="csv" if fmt is ExportFormat.CSV else "jsonl",
                what="log" if feedback_log else "stats",
            )
        except MoEError as exc:
            raise fail(exc) from None
    if out is not None:
        err_console.print(f"wrote {n} rows to {out}")
