"""Scaling decisions from observed load and success, pure: the caller acts on them.

``AutoScaler.observe`` takes one ``Observation`` of an expert at a time (say, one per expert every
few seconds) and keeps a window of the last ``window`` per expert. When the window is full:

- mean load >= ``scale_up_load`` and mean success >= ``min_success``: ``scale_up`` (one more
  instance, up to ``max_instances``) — only experts that perform well get more capacity;
- mean load <= ``scale_down_load``: ``scale_down`` (one fewer, down to ``min_instances``).

After a decision the expert's window starts over, so the next decision needs ``window`` fresh
observations (hysteresis: no flapping on one noisy sample).

Independently, an expert whose success rate stays below ``performance_threshold`` for
``underperforming_window`` observations in a row is disabled, once; one good observation starts
the count over, so a brief dip disables nothing. A disabled expert yields no further decisions
until ``reset``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal

from ..bounds import Ge, Unit, check_bounds
from ..errors import InvalidInput, check_unit
from ..experts.base import Expert
from ..logging import get_logger

__all__ = ["AutoScaler", "Decision", "Observation", "ScalingPolicy"]

log = get_logger(__name__)

Action = Literal["scale_up", "scale_down", "disable"]

_EVENT_KINDS: dict[str, str] = {
    "scale_up": "scale.up",
    "scale_down": "scale.down",
    "disable": "expert.disabled",
}


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """When to add, remove or disable instances of an expert.

    Attributes:
        max_instances: most instances of one expert.
        min_instances: fewest instances of an expert that is not disabled.
        scale_up_load: mean load (in-flight calls / capacity) over the window that adds an instance.
        scale_down_load: mean load over the window that removes one.
        min_success: mean success rate over the window an expert needs to be scaled up.
        window: observations per decision.
        performance_threshold: a success rate below this counts as underperforming.
        underperforming_window: underperforming observations in a row that disable the expert.
    """

    max_instances: int = 4
    min_instances: Annotated[int, Ge(1)] = 1
    scale_up_load: float = 0.8
    scale_down_load: Annotated[float, Ge(0.0)] = 0.2
    min_success: Annotated[float, Unit] = 0.8
    window: Annotated[int, Ge(1)] = 5
    performance_threshold: Annotated[float, Unit] = 0.5
    underperforming_window: Annotated[int, Ge(1)] = 20

    def __post_init__(self) -> None:
        more = {
            "max_instances": self.max_instances >= self.min_instances,
            "scale_up_load": self.scale_up_load > self.scale_down_load,
        }
        check_bounds("scaling", self, more)


@dataclass(frozen=True, slots=True)
class Observation:
    """One look at an expert.

    Attributes:
        expert: its name.
        load: in-flight calls / capacity (0 idle, 1 saturated; may exceed 1 with a queue).
        success_rate: fraction of its calls that succeeded, in [0, 1].
        instances: how many instances it runs now.
    """

    expert: str
    load: float
    success_rate: float
    instances: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.load) and self.load >= 0.0):
            raise InvalidInput(f"load must be a finite number >= 0, got {self.load!r}")
        check_unit(self.success_rate, "success_rate")
        if self.instances < 0:
            raise InvalidInput(f"instances must be >= 0, got {self.instances!r}")

    @classmethod
    def of(cls, expert: Expert, *, instances: int = 1) -> Observation:
        """An observation of ``expert`` now: load is ``current_load / max_load``."""
        stats = expert.stats
        return cls(expert.name, stats.current_load / expert.max_load, stats.success_rate, instances)


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with an expert.

    Attributes:
        expert: its name.
        action: ``scale_up``, ``scale_down`` or ``disable``.
        reason: why, for people.
        instances: how many instances it should run after the action (0 when disabled).
    """

    expert: str
    action: Action
    reason: str
    instances: int

    @property
    def event_kind(self) -> str:
        """The ``EventBus`` kind of this decision (``scale.up``, ``scale.down``, ``expert.disabled``)."""
        return _EVENT_KINDS[self.action]


@dataclass(slots=True)
class _Track:
    loads: deque[float]
    successes: deque[float]
    below: int = 0
    disabled: bool = False


class AutoScaler:
    """Turns a stream of observations into scaling decisions (see the module docstring).

    Args:
        policy: thresholds.
    """

    def __init__(self, policy: ScalingPolicy | None = None) -> None:
        self.policy = policy or ScalingPolicy()
        self._tracks: dict[str, _Track] = {}

    def observe(self, obs: Observation) -> Decision | None:
        """Folds in one observation; returns a decision when one is due."""
        p = self.policy
        track = self._tracks.get(obs.expert)
        if track is None:
            track = self._tracks[obs.expert] = _Track(deque(maxlen=p.window), deque(maxlen=p.window))
        if track.disabled:
            return None
        track.below = track.below + 1 if obs.success_rate < p.performance_threshold else 0
        if track.below >= p.underperforming_window:
            track.disabled = True
            return self._decide(
                track,
                obs.expert,
                "disable",
                f"success rate below {p.performance_threshold} for {track.below} observations in a row",
                0,
            )
        track.loads.append(obs.load)
        track.successes.append(obs.success_rate)
        if len(track.loads) < p.window:
            return None
        load = sum(track.loads) / len(track.loads)
        success = sum(track.successes) / len(track.successes)
        if load >= p.scale_up_load and obs.instances < p.max_instances:
            if success < p.min_success:
                log.debug("scale.refused", expert=obs.expert, load=load, success=success)
                return None
            reason = f"mean load {load:.2f} >= {p.scale_up_load} with success {success:.2f}"
            return self._decide(track, obs.expert, "scale_up", reason, obs.instances + 1)
        if load <= p.scale_down_load and obs.instances > p.min_instances:
            reason = f"mean load {load:.2f} <= {p.scale_down_load}"
            return self._decide(track, obs.expert, "scale_down", reason, obs.instances - 1)
        return None

    def disabled(self, expert: str) -> bool:
        """Whether ``expert`` was disabled (and not ``reset`` since)."""
        track = self._tracks.get(expert)
        return track is not None and track.disabled

    def reset(self, expert: str) -> None:
        """Forgets everything about ``expert`` (after it was replaced, re-enabled or removed)."""
        self._tracks.pop(expert, None)

    def _decide(self, track: _Track, expert: str, action: Action, reason: str, instances: int) -> Decision:
        track.loads.clear()
        track.successes.clear()
        return Decision(expert, action, reason, instances)

    def __repr__(self) -> str:
        return f"AutoScaler(policy={self.policy!r}, experts={sorted(self._tracks)})"
