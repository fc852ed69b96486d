"""The pipeline's manager: A/B assignment, health, scaling and underperformer removal, running.

``Pipeline(management=ManagementConfig(...))`` creates one. It keeps A/B treatments out of normal
routing and swaps them in for their share of their control's traffic; takes unhealthy experts out
of routing until a probe succeeds again; and, every ``interval_s``, turns each expert's load and
success rate into scaling decisions (an expert's instances multiply its ``max_load`` slots) and
disables experts that stay below the performance threshold. Every decision is an event on the
pipeline's bus. It works on the pipeline's roster (``moe_agents.core.roster``), and observes the
pipeline's feedback for its A/B tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated

import anyio

from ..backends.base import GenerationSettings
from ..bounds import Gt, check_bounds
from ..logging import get_logger
from ..types import ExpertScore, Query, Result, Selection
from .ab import ABTest, ABTracker
from .events import EventBus
from .health import HealthMonitor, HealthPolicy
from .ranking import RankingWeights
from .scaling import AutoScaler, Observation, ScalingPolicy

if TYPE_CHECKING:
    from ..core.roster import Roster

__all__ = ["ManagementConfig", "Manager"]

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ManagementConfig:
    """The YAML ``management:`` and ``ab_tests:`` sections.

    Attributes:
        ranking: weights of ``rank_experts`` (``moe-agents experts --stats``).
        auto_scale: scale instances of overloaded, well-performing experts (``None``: off).
        remove_underperforming: disable experts whose success rate stays below
            ``scaling.performance_threshold`` for ``scaling.underperforming_window`` checks.
        scaling: thresholds of both.
        health: probe idle experts and route around unhealthy ones (``None``: off).
        interval_s: how often scaling and removal are checked.
        ab_tests: A/B tests between a control expert and a treatment expert.
    """

    ranking: RankingWeights = field(default_factory=RankingWeights)
    auto_scale: bool = False
    remove_underperforming: bool = False
    scaling: ScalingPolicy = field(default_factory=ScalingPolicy)
    health: HealthPolicy | None = None
    interval_s: Annotated[float, Gt(0.0)] = 5.0
    ab_tests: tuple[ABTest, ...] = ()

    def __post_init__(self) -> None:
        check_bounds("management", self)


class Manager:
    """Runs a ``ManagementConfig`` on a pipeline's roster (see the module docstring); routing
    consults ``excluded`` through the roster.

    Args:
        config: what to run.
        roster: the pipeline's experts.
        bus: where decisions are published.
    """

    def __init__(self, config: ManagementConfig, roster: Roster, bus: EventBus) -> None:
        self.config = config
        self.roster = roster
        self.bus = bus
        self.ab = ABTracker(config.ab_tests)
        self.health = (
            HealthMonitor(config.health, probe=self._probe, bus=bus) if config.health is not None else None
        )
        active = config.auto_scale or config.remove_underperforming
        self.scaler = AutoScaler(config.scaling) if active else None
        roster.add_exclusion(self.excluded)

    @property
    def instances(self) -> Mapping[str, int]:
        """Instances per scaled expert (1 when absent)."""
        return self.roster.instances

    @property
    def treatments(self) -> frozenset[str]:
        """Experts that serve only as A/B treatments (never routed to directly)."""
        return frozenset(t.treatment for t in self.config.ab_tests)

    def excluded(self) -> dict[str, str]:
        """Experts routing must not choose now, with the reason shown in ``Selection.scores``."""
        out = {t.treatment: f"A/B treatment of {t.control!r} (test {t.name!r})" for t in self.config.ab_tests}
        if self.health is not None:
            for name in self.roster.experts:
                if not self.health.healthy(name):
                    out[name] = "unhealthy: failed its health checks"
        return out

    def assign(self, selection: Selection, key: str | None) -> tuple[Selection, dict[str, str]]:
        """Serves each chosen control of an A/B test with the variant the test assigns; returns the
        selection and ``{test: variant}`` for the feedback."""
        assigned: dict[str, str] = {}
        experts = list(selection.experts)
        for i, name in enumerate(experts):
            test = self.ab.test_for(name)
            if test is None or test.control != name or test.treatment in experts:
                continue
            variant = self.ab.assign(test.name, key)
            assigned[test.name] = variant
            experts[i] = variant
        if not assigned:
            return selection, assigned
        scores = dict(selection.scores)
        for test_name, variant in assigned.items():
            note = f"A/B test {test_name!r} assigned {variant!r}"
            scores[variant] = replace(scores.get(variant, ExpertScore()), note=note)
        return replace(selection, experts=tuple(experts), scores=scores), assigned

    def record(self, assigned: Mapping[str, str], score: float) -> None:
        """Feedback on a result whose A/B assignments were ``assigned``."""
        for test, variant in assigned.items():
            self.ab.record(test, variant, score)

    async def on_result(self, query: Query, result: Result) -> None:
        """Nothing: A/B tests learn from feedback only."""

    async def on_failure(self, error: Exception, seconds: float) -> None:
        """Nothing: a failed request has no answer to learn from."""

    async def on_feedback(self, result: Result, score: float) -> None:
        """Feedback on a result served under A/B assignments counts for their variants."""
        assigned = result.metadata.get("ab")
        if isinstance(assigned, Mapping):
            self.record(assigned, score)

    def note_call(self, name: str, ok: bool) -> None:
        """The outcome of one expert call (it counts towards the expert's health)."""
        if self.health is not None:
            self.health.note_call(name, ok)

    async def run(self) -> None:
        """Health checks and the scaling loop, until cancelled (the pipeline's task group)."""
        async with anyio.create_task_group() as tg:
            if self.health is not None:
                tg.start_soon(
                    self.health.run, lambda: [n for n, e in self.roster.experts.items() if e.backends]
                )
            if self.scaler is not None:
                tg.start_soon(self._scale_forever)

    async def _scale_forever(self) -> None:
        while True:
            await anyio.sleep(self.config.interval_s)
            self.check_scaling()

    def check_scaling(self) -> None:
        """One round: an observation per expert, and the decisions acted on."""
        if self.scaler is None:
            return
        for name, expert in list(self.roster.experts.items()):
            n = self.instances.get(name, 1)
            obs = Observation(name, expert.current_load / (expert.max_load * n), expert.success_rate, n)
            decision = self.scaler.observe(obs)
            if decision is None:
                continue
            if decision.action == "disable":
                if self.config.remove_underperforming:
                    self.roster.disable(name, reason=decision.reason)
                continue
            if not self.config.auto_scale:
                continue
            self.roster.scale(name, decision.instances)
            self.bus.publish(
                decision.event_kind, expert=name, reason=decision.reason, instances=decision.instances
            )

    async def _probe(self, name: str) -> bool:
        """A one-token completion through the expert's first backend."""
        expert = self.roster.experts.get(name)
        if expert is None or not expert.backends:
            return True
        backend = expert.backends[0]
        await backend.complete(
            [{"role": "user", "content": "ping"}], settings=GenerationSettings(max_tokens=1)
        )
        return True
