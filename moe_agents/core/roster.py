"""The roster: a running pipeline's experts, the limiters that hold them to their capacity, and
which of them routing may choose.

Changes copy on write: ``lineup()`` hands a request the experts and limiters of the moment, and the
request finishes on them even if an expert is removed or replaced meanwhile. An expert's capacity
is its policy's ``max_load`` × its instances (``scale``); a new policy (``set_policy``) resizes its
limiter at once. Every change is an event on the bus (``expert.registered``, ``expert.removed``,
``expert.replaced``, ``expert.disabled``, ``expert.enabled``, ``expert.policy_changed``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import anyio

from ..errors import ConfigError
from ..experts.base import Expert
from ..experts.policy import ExpertPolicy
from ..management.events import EventBus

__all__ = ["Exclusions", "Member", "Roster"]

Exclusions = Callable[[], Mapping[str, str]]
"""Experts some component keeps out of routing now, with why (``Manager.excluded``)."""


@dataclass(frozen=True, slots=True)
class Member:
    """One registered expert and the limiter that holds its concurrent calls to its capacity."""

    expert: Expert
    limiter: anyio.CapacityLimiter


class Roster:
    """The registry of a pipeline's experts (see the module docstring).

    Args:
        experts: the experts, with unique names.
        events: where changes are published.
        pinned: experts that other parts of the pipeline call by name, with what names them
            (``{"writer": "aggregation.synthesis_expert"}``); they cannot be removed.
    """

    def __init__(
        self, experts: Sequence[Expert], events: EventBus, *, pinned: Mapping[str, str] | None = None
    ) -> None:
        self.events = events
        self.pinned: Mapping[str, str] = MappingProxyType(dict(pinned or {}))
        self._members: Mapping[str, Member] = {e.name: _member(e, 1) for e in experts}
        self._experts: Mapping[str, Expert] = {e.name: e for e in experts}
        self._instances: dict[str, int] = {}
        self._disabled: dict[str, str] = {}
        self._exclusions: list[Exclusions] = []

    @property
    def experts(self) -> Mapping[str, Expert]:
        """The experts by name (a new mapping after every change)."""
        return self._experts

    @property
    def disabled(self) -> frozenset[str]:
        """Experts taken out of routing by ``disable``."""
        return frozenset(self._disabled)

    @property
    def instances(self) -> Mapping[str, int]:
        """Instances per scaled expert (1 when absent)."""
        return MappingProxyType(self._instances)

    def lineup(self) -> Mapping[str, Member]:
        """The experts and their limiters now, for one request (limiters sized to the policies:
        an expert whose ``policy`` was assigned directly gets its new capacity here)."""
        for name in self._members:
            self._resize(name)
        return self._members

    def add_exclusion(self, source: Exclusions) -> None:
        """Consults ``source`` too whenever the experts routing may choose are needed."""
        self._exclusions.append(source)

    def excluded(self) -> dict[str, str]:
        """Experts kept out of routing now, with why."""
        out = {name: f"disabled: {why}" for name, why in self._disabled.items()}
        for source in self._exclusions:
            out.update(source())
        return out

    def active(self) -> list[Expert]:
        """The experts routing may choose now."""
        out = self.excluded()
        return [e for name, e in self._experts.items() if name not in out]

    def register(self, expert: Expert) -> None:
        """Adds an expert; new requests may be routed to it.

        Raises:
            ConfigError: an expert with that name exists already.
        """
        if expert.name in self._members:
            raise ConfigError(f"an expert named {expert.name!r} exists already; use replace()")
        self._set({**self._members, expert.name: _member(expert, 1)})
        self._changed("expert.registered", expert.name)

    def remove(self, name: str) -> Expert:
        """Removes an expert: requests already running finish with it, new ones never see it.

        Raises:
            ConfigError: no such expert, it is the last one, or another part of the pipeline names it.
        """
        expert = self._require(name)
        if len(self._members) == 1:
            raise ConfigError(f"cannot remove {name!r}: a pipeline needs at least one expert")
        if name in self.pinned:
            raise ConfigError(f"cannot remove {name!r}: {self.pinned[name]} names it")
        self._set({k: v for k, v in self._members.items() if k != name})
        self._disabled.pop(name, None)
        self._instances.pop(name, None)
        self._changed("expert.removed", name)
        return expert

    def replace(self, name: str, expert: Expert) -> Expert:
        """Swaps in a new expert under ``name``; requests already running finish on the old one,
        with its limiter. Returns the old one.

        Raises:
            ConfigError: no such expert, or ``expert.name`` is not ``name``.
        """
        old = self._require(name)
        if expert.name != name:
            raise ConfigError(f"replace({name!r}, ...) got an expert named {expert.name!r}")
        self._set({**self._members, name: _member(expert, self._instances.get(name, 1))})
        self._changed("expert.replaced", name)
        return old

    def disable(self, name: str, reason: str = "") -> None:
        """Takes an expert out of routing without removing it (``enable`` brings it back).

        Raises:
            ConfigError: no such expert, or it is the last one routing may choose.
        """
        self._require(name)
        if name in self._disabled:
            return
        if not [e for e in self.active() if e.name != name]:
            raise ConfigError(f"cannot disable {name!r}: it is the last expert routing may choose")
        self._disabled[name] = reason or "disabled"
        self._changed("expert.disabled", name, reason=reason)

    def enable(self, name: str) -> None:
        """Puts a disabled expert back into routing."""
        self._require(name)
        if self._disabled.pop(name, None) is not None:
            self._changed("expert.enabled", name)

    def set_policy(self, name: str, policy: ExpertPolicy) -> None:
        """Gives an expert a new policy, from the next call on: its limiter is resized to the new
        ``max_load`` at once (calls running keep their slots).

        Raises:
            ConfigError: no such expert.
        """
        expert = self._require(name)
        expert.policy = policy
        self._resize(name)
        self._changed("expert.policy_changed", name)

    def scale(self, name: str, instances: int) -> None:
        """Runs ``instances`` copies of an expert's capacity: its limiter lets ``max_load`` ×
        ``instances`` calls through, from now on."""
        self._require(name)
        self._instances[name] = instances
        self._resize(name)

    def _resize(self, name: str) -> None:
        member = self._members[name]
        capacity = member.expert.policy.max_load * self._instances.get(name, 1)
        if member.limiter.total_tokens != capacity:
            member.limiter.total_tokens = capacity

    def _require(self, name: str) -> Expert:
        expert = self._experts.get(name)
        if expert is None:
            raise ConfigError(f"no expert named {name!r}; experts: {list(self._experts)}")
        return expert

    def _set(self, members: Mapping[str, Member]) -> None:
        self._members = members
        self._experts = {name: m.expert for name, m in members.items()}

    def _changed(self, kind: str, name: str, **data: str) -> None:
        self.events.publish(kind, expert=name, experts=list(self._experts), **data)


def _member(expert: Expert, instances: int) -> Member:
    return Member(expert, anyio.CapacityLimiter(expert.policy.max_load * instances))
