"""Connecting to Ray once per process, as the ``ray:`` section says."""

from __future__ import annotations

import os
import threading

from ..logging import get_logger
from .settings import RayConfig

__all__ = ["connect"]

log = get_logger(__name__)

_LOCK = threading.Lock()


def connect(config: RayConfig, *, http: tuple[str, int] | None = None) -> None:
    """Starts or joins the cluster (once per process) and starts Serve: without its HTTP proxy
    (moe-agents talks to deployments through handles), or with it on ``http=(host, port)`` for
    ``serve --ray``."""
    import ray
    from ray import serve

    with _LOCK:
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if config.address == "local":
                ray.init(
                    address="local",  # a new cluster, never one found in /tmp/ray or $RAY_ADDRESS
                    num_cpus=config.num_cpus,
                    num_gpus=config.num_gpus,
                    object_store_memory=None
                    if config.object_store_mb is None
                    else config.object_store_mb * 2**20,
                    include_dashboard=False,
                    namespace=config.namespace,
                    log_to_driver=False,
                )
            else:
                ray.init(address=config.address, namespace=config.namespace, log_to_driver=False)
            log.info("ray.connected", address=config.address, namespace=config.namespace)
        if http is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(proxy_location="HeadOnly", http_options={"host": http[0], "port": http[1]})
