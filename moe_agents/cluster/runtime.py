"""Connecting to Ray once per process, as the ``ray:`` section says."""

from __future__ import annotations

import os
import threading

from ..logging import get_logger
from .settings import RayConfig

__all__ = ["connect"]

log = get_logger(__name__)

_LOCK = threading.Lock()
_STARTS = 3
"""Attempts at starting a local cluster: Ray gives its raylet a fixed 30 s to register, which a
loaded small machine can miss; a second start usually succeeds."""


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
                _start_local(config)
            else:
                ray.init(address=config.address, namespace=config.namespace, log_to_driver=False)
            log.info("ray.connected", address=config.address, namespace=config.namespace)
        if http is None:
            serve.start(proxy_location="Disabled")
        else:
            serve.start(proxy_location="HeadOnly", http_options={"host": http[0], "port": http[1]})


def _start_local(config: RayConfig) -> None:
    """A new local cluster (never one found in /tmp/ray or $RAY_ADDRESS), started again after a
    start-up timeout."""
    import ray

    store = None if config.object_store_mb is None else config.object_store_mb * 2**20
    for attempt in range(1, _STARTS + 1):
        try:
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                num_gpus=config.num_gpus,
                object_store_memory=store,
                include_dashboard=False,
                namespace=config.namespace,
                log_to_driver=False,
            )
            return
        except Exception as e:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(e) or attempt == _STARTS:
                raise
            log.warning("ray.start_timed_out", attempt=attempt, of=_STARTS)
            ray.shutdown()  # stops the half-started processes before the next attempt
