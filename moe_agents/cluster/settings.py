"""The YAML ``ray:`` section and a backend's ``placement:``; no Ray import, so configurations
validate without the ``ray`` extra installed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Placement", "RayConfig"]


class RayConfig(BaseModel):
    """Where the Ray cluster is (the YAML ``ray:`` section).

    Attributes:
        address: ``local`` starts a private cluster in this process (``num_cpus``,
            ``object_store_mb``); ``auto`` joins the cluster this machine belongs to
            (``ray start``); ``ray://host:10001`` connects as a Ray client.
        num_cpus: CPUs of a ``local`` cluster (default: all).
        num_gpus: GPUs of a ``local`` cluster (default: all).
        object_store_mb: object store of a ``local`` cluster.
        namespace: the Ray namespace of the deployments and the shared trust store.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(default="local", min_length=1)
    num_cpus: int | None = Field(default=None, ge=1)
    num_gpus: int | None = Field(default=None, ge=0)
    object_store_mb: int | None = Field(default=None, ge=64)
    namespace: str = Field(default="moe-agents", min_length=1)


class Placement(BaseModel):
    """How a backend runs on Ray (a backend's ``placement:``): one Serve deployment, its replicas
    and what each needs.

    Attributes:
        replicas: replicas of the deployment.
        num_cpus: CPUs per replica (fractions allowed).
        num_gpus: GPUs per replica (fractions allowed).
        max_ongoing_requests: requests one replica runs at once.
        router: ``permission`` (moe-agents' permission function picks the replica) or ``ray``
            (Ray Serve's default power-of-two-choices router).
        service_s: the router's estimate of one request's seconds, to turn a queue into a wait.
        swap_s: the router's estimate of loading a model on a replica that does not hold it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    max_ongoing_requests: int = Field(default=8, ge=1)
    router: Literal["permission", "ray"] = "permission"
    service_s: float = Field(default=0.05, gt=0.0)
    swap_s: float = Field(default=2.0, ge=0.0)
