"""``moe-agents serve --ray``: the HTTP server as a Ray Serve ingress deployment with N replicas.

Each replica builds the pipeline from the same YAML file (its backends with ``placement:`` are
shared deployments, reached through handles) and serves it with ``create_app``; Serve's HTTP proxy
spreads requests over the replicas. With a ``SharedTrust`` store, feedback given to any replica
moves the same trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..server.settings import ServerConfig
from .runtime import connect
from .settings import RayConfig

__all__ = ["serve_on_ray"]


def _builder(config_path: str, server: ServerConfig) -> Any:
    def build() -> Any:
        from ..config import load_pipeline
        from ..server.app import create_app

        return create_app(load_pipeline(config_path), server)

    return build


def serve_on_ray(
    config_path: str | Path,
    ray: RayConfig,
    server: ServerConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    num_cpus: float = 0.5,
    blocking: bool = True,
) -> Any:
    """Deploys the server as the Serve application ``moe-agents`` behind Serve's HTTP proxy on
    ``host:port``; blocks until interrupted unless ``blocking=False`` (then returns the handle)."""
    from ray import serve

    connect(ray, http=(host, port))
    build = _builder(str(Path(config_path).resolve()), server)
    deployment: Any = serve.deployment(
        serve.ingress(build)(),
        name="moe-agents-ingress",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus},
    )
    return serve.run(deployment.bind(), name="moe-agents", route_prefix="/", blocking=blocking)
