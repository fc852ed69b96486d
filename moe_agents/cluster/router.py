"""The permission function choosing Ray Serve replicas.

``PermissionReplicaRouter`` plugs the one selection rule (``routing.permission.select``) into
Ray Serve's request-router extension point. Each replica is a candidate with

- cost = its queue × ``service_s`` (the wait) + ``swap_s`` if it does not hold the requested
  model (``multiplexed_model_ids``, and what this router sent it lately), so cheapness is
  ``1 / (1 + cost)``;
- persistence = 1 + hysteresis when it holds the model;
- expertise = 1 (replicas of one deployment are the same model).

Replicas come back one per rank, best first (ties in random order, so a burst spreads); Ray probes
the first and moves on when it is full.
"""

from __future__ import annotations

import random
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.serve.request_router import (
    FIFOMixin,
    MultiplexMixin,
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from ..routing.permission import Candidates, SelectConfig, select

__all__ = ["PermissionReplicaRouter", "rank_replicas"]


def rank_replicas(
    names: Sequence[str],
    queue: Sequence[float],
    holds: Sequence[bool],
    *,
    service_s: float,
    swap_s: float,
    hysteresis: float,
) -> list[int]:
    """Indices of the replicas best first, by permission (see the module docstring); equal
    permissions keep the order given (the router shuffles candidates first, so ties spread)."""
    n = len(names)
    holds_arr = np.asarray(holds, dtype=bool)
    candidates = Candidates(
        names=list(names),
        expertise=np.ones(n),
        price=np.asarray(queue, dtype=np.float64) * service_s,
        swap_s=np.where(holds_arr, 0.0, swap_s),
        resident=holds_arr,
    )
    config = SelectConfig(epsilon=0.0, cost_weight=1.0, hysteresis=hysteresis)
    selection = select(candidates, config, k=n)
    index = {name: i for i, name in enumerate(names)}
    return [index[name] for name in selection.experts]


class PermissionReplicaRouter(FIFOMixin, MultiplexMixin, RequestRouter):  # type: ignore[misc]
    """Ray Serve request router ranking replicas by permission (see the module docstring).

    Configured through ``request_router_kwargs``: ``service_s``, ``swap_s``, ``hysteresis`` and
    ``slots`` (models one replica holds; what this router sent it lately counts as held).
    """

    def initialize_state(
        self, service_s: float = 0.05, swap_s: float = 2.0, hysteresis: float = 0.2, slots: int = 1, **_: Any
    ) -> None:
        self.service_s, self.swap_s, self.hysteresis, self.slots = service_s, swap_s, hysteresis, slots
        self.outstanding: defaultdict[ReplicaID, int] = defaultdict(int)
        self.sent_models: defaultdict[ReplicaID, OrderedDict[str, None]] = defaultdict(OrderedDict)
        self.routed: dict[str, ReplicaID] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        candidate_replicas = random.sample(candidate_replicas, len(candidate_replicas))  # ties spread
        model = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        cache = self.replica_queue_len_cache
        queue, holds = [], []
        for r in candidate_replicas:
            cached = cache.get(r.replica_id)
            queue.append(max(cached or 0, self.outstanding[r.replica_id]))
            holds.append(
                not model or model in r.multiplexed_model_ids or model in self.sent_models[r.replica_id]
            )
        order = rank_replicas(
            [r.replica_id.unique_id for r in candidate_replicas],
            queue,
            holds,
            service_s=self.service_s,
            swap_s=self.swap_s,
            hysteresis=self.hysteresis,
        )
        return [[candidate_replicas[i]] for i in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        self.outstanding[replica_id] += 1
        self.routed[pending_request.metadata.internal_request_id] = replica_id
        model = pending_request.metadata.multiplexed_model_id
        if model:
            held = self.sent_models[replica_id]
            held[model] = None
            held.move_to_end(model)
            while len(held) > self.slots:
                held.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        if self.routed.pop(internal_request_id, None) is not None:  # not for requests it rejected
            self.outstanding[replica_id] = max(self.outstanding[replica_id] - 1, 0)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.outstanding.pop(replica_id, None)
        self.sent_models.pop(replica_id, None)
