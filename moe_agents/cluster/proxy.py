"""``RayBackend``: the Backend seam over a Ray Serve deployment.

An expert holds it like any backend (behind the same retry and circuit-breaker guard); its calls go
through a ``DeploymentHandle`` to a replica that runs the real backend (``replica.py``). Streaming,
cancellation and errors cross the hop:

- ``on_chunk`` streams the replica's chunks as they come;
- cancelling the call (a client disconnect, a deadline) cancels the request on the replica;
- a replica that dies mid-call is a retryable ``BackendError``, so the guard retries it (Serve
  routes the retry to a live replica) before the pipeline falls back to the next expert;
- an error the backend raised on the replica comes back as itself.

Each completion records where it ran in ``metadata["placement"]`` (deployment, replica, node),
which becomes the answer's.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import anyio

from ..backends.base import ChunkCallback, Completion, GenerationSettings
from ..errors import BackendError, MoEError
from ..logging import get_logger
from ..types import Message
from .replica import BackendReplica, Make, pooled_replica
from .runtime import connect
from .settings import Placement, RayConfig

__all__ = ["RayBackend", "deploy"]

log = get_logger(__name__)

_DEPLOYED: dict[str, list[Any]] = {}
"""The applications this process uses, by name: ``[handle, deployed here, users]``; the last
user to unload deletes an application this process deployed (a pool is shared by its backends)."""
_LOCK = threading.Lock()


def _router_config(placement: Placement, slots: int) -> Any:
    if placement.router == "ray":
        return None  # Serve's default: power of two choices
    from ray.serve.config import RequestRouterConfig

    return RequestRouterConfig(
        request_router_class="moe_agents.cluster.router:PermissionReplicaRouter",  # type: ignore[arg-type]
        request_router_kwargs={"service_s": placement.service_s, "swap_s": placement.swap_s, "slots": slots},
    )


def deploy(
    name: str,
    placement: Placement,
    *,
    make: Make | None = None,
    pool: Mapping[str, Make] | None = None,
    slots: int = 1,
) -> Any:
    """Runs one backend (``make``) or a pool of them served by model id (``pool={model_id:
    make}``, ``slots`` loaded per replica) as the Serve application ``name``; returns its
    ``DeploymentHandle``. Blocks until the replicas are up."""
    from ray import serve

    cls: Any = BackendReplica if pool is None else pooled_replica(slots)
    options: dict[str, Any] = {
        "name": name,
        "num_replicas": placement.replicas,
        "ray_actor_options": {"num_cpus": placement.num_cpus, "num_gpus": placement.num_gpus},
        "max_ongoing_requests": placement.max_ongoing_requests,
    }
    router = _router_config(placement, slots)
    if router is not None:
        options["request_router_config"] = router
    deployment: Any = serve.deployment(cls, **options)
    app = deployment.bind(make) if pool is None else deployment.bind(dict(pool))
    handle = serve.run(app, name=name, route_prefix=None)
    log.info("ray.deployed", app=name, replicas=placement.replicas, router=placement.router)
    return handle


class RayBackend:
    """A backend that runs as a Ray Serve deployment (see the module docstring).

    Args:
        name: the application's name on the cluster (one per backend, or per pool).
        make: builds the backend on each replica (``BackendMaker(kind, options)``; paths in the
            options must exist on the replicas' nodes).
        placement: replicas and their resources.
        ray: where the cluster is.
        model_id: with ``pool``, this backend's id in the pool.
        pool: every backend of a multiplexed pool, by model id (``make`` is unused).
        slots: with ``pool``, models loaded per replica at once.
    """

    def __init__(
        self,
        name: str,
        make: Make | None,
        placement: Placement,
        ray: RayConfig,
        *,
        model_id: str | None = None,
        pool: Mapping[str, Make] | None = None,
        slots: int = 1,
    ) -> None:
        self.app = name
        self.name = f"ray:{name}" if model_id is None else f"ray:{name}/{model_id}"
        self.make, self.placement, self.ray = make, placement, ray
        self.model_id, self.pool, self.slots = model_id, pool, slots
        self.modalities: frozenset[str] = frozenset()
        self.handle: Any = None

    async def load(self) -> None:
        self.handle = await anyio.to_thread.run_sync(self._deployed)
        if self.model_id is not None:
            self.handle = self.handle.options(multiplexed_model_id=self.model_id)
        described = await self._call(self.handle.describe.remote())
        self.modalities = frozenset(described["modalities"])

    def _deployed(self) -> Any:
        """The application's handle: deployed by this process, or found running on the cluster
        (another ingress replica or process deployed it; it is then never deleted from here)."""
        from ray import serve
        from ray.serve.exceptions import RayServeException

        with _LOCK:  # one deployment per application, however many backends share it
            if self.app not in _DEPLOYED:
                connect(self.ray)
                try:
                    _DEPLOYED[self.app] = [serve.get_app_handle(self.app), False, 0]
                except RayServeException:
                    handle = deploy(
                        self.app, self.placement, make=self.make, pool=self.pool, slots=self.slots
                    )
                    _DEPLOYED[self.app] = [handle, True, 0]
            if self.handle is None:
                _DEPLOYED[self.app][2] += 1
            return _DEPLOYED[self.app][0]

    async def unload(self) -> None:
        from ray import serve

        def delete() -> None:
            with _LOCK:
                deployed = _DEPLOYED.get(self.app)
                if deployed is None or self.handle is None:
                    return
                deployed[2] -= 1
                if deployed[2] <= 0:
                    del _DEPLOYED[self.app]
                    if deployed[1]:
                        serve.delete(self.app)

        await anyio.to_thread.run_sync(delete)
        self.handle = None

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        if self.handle is None:
            await self.load()
        if on_chunk is None:
            completion, placement = await self._call(self.handle.complete.remote(list(messages), settings))
        else:
            stream = self.handle.options(stream=True).stream.remote(list(messages), settings)
            completion = placement = None
            try:
                async for item in stream:
                    if isinstance(item, str):
                        await on_chunk(item)
                    else:
                        completion, placement = item
            except anyio.get_cancelled_exc_class():
                stream.cancel()
                raise
            except Exception as exc:
                raise self._error(exc) from exc
            if completion is None:
                raise BackendError(f"{self.name}: the stream ended without a completion", backend=self.name)
        return replace(completion, metadata={**completion.metadata, "placement": placement})

    async def _call(self, response: Any) -> Any:
        try:
            return await response
        except anyio.get_cancelled_exc_class():
            response.cancel()  # reaches the replica: its backend call is cancelled
            raise
        except Exception as exc:
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> MoEError:
        from ray import exceptions as rx

        cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
        if isinstance(cause, MoEError):
            return cause  # the backend's own error, raised on the replica
        died = isinstance(exc, rx.RayActorError | rx.ActorUnavailableError)
        what = "its replica died" if died else f"{type(exc).__name__}: {exc}"
        log.warning("ray.call_failed", backend=self.name, error=what)
        return BackendError(f"{self.name}: {what}", backend=self.name, retryable=died)

    def __repr__(self) -> str:
        return f"RayBackend({self.name!r}, replicas={self.placement.replicas})"
