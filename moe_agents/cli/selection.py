"""Rendering a routing selection, and reading the attachments of a request."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..types import Attachment, Selection
from .common import err_console


def selection_line(selection: Selection) -> str:
    """The chosen experts with their weights, and the selection mode."""
    parts = ", ".join(f"{e} {w:.2f}" for e, w in zip(selection.experts, selection.weights, strict=True))
    return f"→ {parts}  [dim]({selection.mode})[/]"


def scores_table(selection: Selection) -> Table:
    """Every expert's routing scores, by permission, with the chosen experts' weights."""
    table = Table("expert", "gate", "self", "load", "expertise", "permission", "chosen", "note", box=None)

    def f(x: float | None) -> str:
        return "—" if x is None else f"{x:.3f}"

    ranked = sorted(selection.scores.items(), key=lambda kv: kv[1].permission, reverse=True)
    for name, s in ranked:
        chosen = f"{selection.weight(name):.2f}" if name in selection.experts else ""
        table.add_row(
            name,
            f(s.gate),
            f(s.self_assessment),
            f(s.load),
            f(s.expertise),
            f(s.permission),
            chosen,
            s.note or "",
        )
    return table


def attachments(image: list[Path] | None, audio: list[Path] | None) -> tuple[Attachment, ...]:
    """The attachments of the given files; a missing file exits with code 2."""
    found: list[Attachment] = []
    for kind, paths in (("image", image or []), ("audio", audio or [])):
        for p in paths:
            if not p.is_file():
                err_console.print(f"[bold red]error:[/] attachment {p} does not exist or is not a file")
                raise typer.Exit(2)
            found.append(Attachment(kind, path=p))  # type: ignore[arg-type]
    return tuple(found)
