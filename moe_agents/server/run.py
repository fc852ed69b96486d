"""Running the server: ``serve`` starts uvicorn on one pipeline, refusing to expose an open server."""

from __future__ import annotations

import ipaddress

from ..errors import ConfigError
from ..pipeline import Pipeline
from .settings import ServerConfig

__all__ = ["check_exposure", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig, host: str, *, allow_open: bool = False) -> None:
    """Raises ``ConfigError`` for an open server (no API keys) on a non-loopback ``host``, unless
    ``allow_open``: an open server is never exposed by accident."""
    if not config.api_keys and not is_loopback(host) and not allow_open:
        raise ConfigError(
            f"refusing to serve without API keys on {host}: set server.api_keys in the configuration "
            '(e.g. ["${MOE_API_KEY}"]), bind to 127.0.0.1, or pass --allow-open'
        )


def serve(
    pipeline: Pipeline,
    config: ServerConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_open: bool = False,
    log_level: str = "info",
) -> None:
    """Serves ``pipeline`` over HTTP until interrupted (see ``moe_agents.server.app``).

    Raises:
        ConfigError: no API key is configured and ``host`` is not loopback, without
            ``allow_open``: an open server is never exposed by accident.
    """
    import uvicorn

    from .app import create_app

    config = config or ServerConfig()
    check_exposure(config, host, allow_open=allow_open)
    uvicorn.run(
        create_app(pipeline, config),
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
    )
