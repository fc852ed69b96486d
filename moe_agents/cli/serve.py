"""``moe-agents serve``: the pipeline behind an OpenAI-compatible HTTP server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..config import default_config_path, read_config
from ..errors import MoEError
from .common import fail, load, setup


def serve(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Pipeline YAML (default: offline).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs API keys.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    allow_open: Annotated[
        bool, typer.Option("--allow-open", help="Serve without API keys on a non-loopback address.")
    ] = False,
    on_ray: Annotated[
        bool,
        typer.Option("--ray", help="Run the server as a Ray Serve ingress (the config's `ray:` section)."),
    ] = False,
    replicas: Annotated[int, typer.Option(help="With --ray: ingress replicas.", min=1)] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log routing and expert events.")] = False,
) -> None:
    """Serve the pipeline over OpenAI's chat-completions API, with a chat page at / and /metrics."""
    setup(verbose)
    try:
        from ..server.run import check_exposure
        from ..server.run import serve as run_server
    except ImportError as exc:
        typer.echo(
            f"error: the server needs the `server` extra: pip install 'moe-agents[server]' ({exc})", err=True
        )
        raise typer.Exit(1) from None
    path = config or default_config_path()
    try:
        spec, _ = read_config(path)
        check_exposure(spec.server, host, allow_open=allow_open)
    except MoEError as exc:
        raise fail(exc) from None
    if on_ray:
        from ..cluster.ingress import serve_on_ray
        from ..cluster.settings import RayConfig

        typer.echo(f"serving on Ray: {replicas} replica(s) at http://{host}:{port}", err=True)
        serve_on_ray(path, spec.ray or RayConfig(), spec.server, host=host, port=port, replicas=replicas)
        return
    pipeline = load(path)
    try:
        run_server(
            pipeline,
            spec.server,
            host=host,
            port=port,
            allow_open=allow_open,
            log_level="info" if verbose else "warning",
        )
    except MoEError as exc:
        raise fail(exc) from None
