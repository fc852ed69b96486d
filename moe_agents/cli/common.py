"""What every command shares: the consoles, the common options, logging setup, loading a pipeline
and turning moe-agents errors into one line and exit code 1."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import structlog
import typer
from rich.console import Console

from ..backends import TransformersBackend
from ..config import default_config_path, load_pipeline
from ..errors import MoEError
from ..logging import LIBRARY_LOGGER, redact_secrets
from ..pipeline import Pipeline

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Pipeline YAML (default: the offline default).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log pipeline events to stderr.")]


def setup(verbose: bool) -> None:
    """The application, not the library, configures logging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    setup_logging(verbose)
    if not verbose:  # progress bars of model loading are noise next to the spinner
        os.environ.setdefault("TQDM_DISABLE", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment (tests and rich swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """Library events go to stderr, secrets masked: INFO and up with ``--verbose``, else warnings only.

    The library logs through the standard ``logging`` module (see ``moe_agents.logging``): the CLI
    renders its events with structlog's console renderer and attaches one stderr handler.
    """
    level = logging.INFO if verbose else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            redact_secrets,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        cache_logger_on_first_use=False,
    )
    library = logging.getLogger(LIBRARY_LOGGER)
    for handler in [h for h in library.handlers if isinstance(h, _StderrHandler)]:
        library.removeHandler(handler)
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter("%(message)s"))
    library.addHandler(handler)
    # lower the logger's own level if needed, never raise one the embedding application lowered
    library.setLevel(min(level, library.getEffectiveLevel()))


def fail(exc: MoEError) -> typer.Exit:
    """Prints a moe-agents error as one line; the caller raises the returned exit (code 1)."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(1)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Runs ``fn``, turning moe-agents errors into a one-line message and exit code 1."""
    try:
        return anyio.run(fn)
    except MoEError as exc:
        raise fail(exc) from None


def load(config: Path | None) -> Pipeline:
    """The pipeline of ``config`` (default: the offline default); a bad config is one error line."""
    try:
        return load_pipeline(config or default_config_path())
    except MoEError as exc:
        raise fail(exc) from None


async def open_pipeline(stack: AsyncExitStack, pipeline: Pipeline, *, quiet: bool = False) -> Pipeline:
    """Enters the pipeline (loads models) behind a spinner."""
    if quiet:
        return await stack.enter_async_context(pipeline)
    with err_console.status(_loading_text(pipeline), spinner="dots"):
        return await stack.enter_async_context(pipeline)


def _loading_text(pipeline: Pipeline) -> str:
    """The spinner's text: a GGUF model's first load (a one-time conversion) is announced as such."""
    first = sorted(
        {
            Path(b.gguf_file).stem
            for b in pipeline.backends
            if isinstance(b, TransformersBackend) and b.gguf_file and b.needs_preparation()
        }
    )
    if not first:
        return "Loading models…"
    return f"Preparing {', '.join(first)} for first use (one-time conversion, a minute or more)…"


def when(ts: float) -> str:
    """A unix time as local date and time."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
