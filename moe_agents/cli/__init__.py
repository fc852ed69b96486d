"""The ``moe-agents`` command line: chat, ask, route, experts, fit, serve, eval, ab, trust and memory.

One module per group of commands; this one assembles the typer application. Each module only
renders what the library computes.
"""

from __future__ import annotations

import typer

from . import ab, evaluate, memory, trust
from .chat import ask, chat
from .common import setup_logging as _setup_logging  # noqa: F401  (the name tests/test_logging.py imports)
from .routing import experts, fit, route
from .serve import serve

__all__ = ["app", "main"]

app = typer.Typer(
    name="moe-agents",
    help="Mixtures of experts over LLM agents. Every command works offline on the default configuration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (ask, route, experts, fit, chat, serve):
    app.command()(command)
app.add_typer(evaluate.app, name="eval")
app.add_typer(ab.app, name="ab")
app.add_typer(trust.app, name="trust")
app.add_typer(memory.app, name="memory")


def main() -> None:
    """Entry point of the ``moe-agents`` console script."""
    app()
