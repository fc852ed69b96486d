"""An OpenAI-compatible HTTP server for a pipeline (the ``server`` extra: FastAPI and uvicorn).

``create_app(pipeline, config)`` is the ASGI application; ``serve(...)`` runs it with uvicorn;
``moe-agents serve`` is the command. ``ServerConfig`` (the YAML ``server:`` section) imports no
web framework, so configurations validate without the extra installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import ServerConfig

if TYPE_CHECKING:
    from .app import create_app
    from .run import serve

__all__ = ["ServerConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .run import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
