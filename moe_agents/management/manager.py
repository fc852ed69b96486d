"""The pipeline's manager: A/B assignment, health, scaling and underperformer removal, running.

``Pipeline(management=ManagementConfig(...))`` creates one. It keeps A/B treatments out of normal
routing and swaps them in for their share of their control's traffic; takes unhealthy experts out
of routing until a probe succeeds again; and, every ``interval_s``, turns each expert's load and
success rate into scaling decisions (an expert's instances multiply its ``max_load`` slots) and
disables experts that stay below the performance threshold. Every decision is an event on the
pipeline's bus.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import anyio

from ..backends.base import GenerationSettings
from ..errors import check_settings
from ..logging import get_logger
from ..types import ExpertScore, Selection
from .ab import ABTest, ABTracker
from .events import EventBus
from .health import HealthMonitor, HealthPolicy
from .ranking import RankingWeights
from .scaling import AutoScaler, Observation, ScalingPolicy

if TYPE_CHECKING:
    from ..experts.base import Expert
    from ..pipeline import Pipeline

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
    interval_s: float = 5.0
    ab_tests: tuple[ABTest, ...] = ()

    def __post_init__(self) -> None:
        check_settings("management", self, {"interval_s": self.interval_s > 0})


class Manager:
    """Runs a ``ManagementConfig`` for one pipeline (see the module docstring)."""

    def __init__(self, config: ManagementConfig, pipeline: Pipeline, bus: EventBus) -> None:
        self.config = config
        self.pipeline = pipeline
        self.bus = bus
        self.ab = ABTracker(config.ab_tests)
        self.health = (
            HealthMonitor(config.health, probe=self._probe, bus=bus) if config.health is not None else None
        )
        active = config.auto_scale or config.remove_underperforming
        self.scaler = AutoScaler(config.scaling) if active else None
        self.instances: dict[str, int] = {}

    @property
    def treatments(self) -> frozenset[str]:
        """Experts that serve only as A/B treatments (never routed to directly)."""
        return frozenset(t.treatment for t in self.config.ab_tests)

    def excluded(self) -> dict[str, str]:
        """Experts routing must not choose now, with the reason shown in ``Selection.scores``."""
        out = {t.treatment: f"A/B treatment of {t.control!r} (test {t.name!r})" for t in self.config.ab_tests}
        if self.health is not None:
            for name in self.pipeline.experts:
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

    def note_call(self, name: str, ok: bool) -> None:
        if self.health is not None:
            self.health.note_call(name, ok)

    async def run(self) -> None:
        """Health checks and the scaling loop, until cancelled (the pipeline's task group)."""
        async with anyio.create_task_group() as tg:
            if self.health is not None:
                tg.start_soon(
                    self.health.run, lambda: [n for n, e in self.pipeline.experts.items() if e.backends]
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
        for name, expert in list(self.pipeline.experts.items()):
            n = self.instances.get(name, 1)
            obs = Observation(name, expert.current_load / (expert.max_load * n), expert.success_rate, n)
            decision = self.scaler.observe(obs)
            if decision is None:
                continue
            if decision.action == "disable":
                if self.config.remove_underperforming:
                    self.pipeline.disable(name, reason=decision.reason)
                continue
            if not self.config.auto_scale:
                continue
            self.instances[name] = decision.instances
            self._resize(name, expert, decision.instances)
            self.bus.publish(
                decision.event_kind, expert=name, reason=decision.reason, instances=decision.instances
            )

    def _resize(self, name: str, expert: Expert, instances: int) -> None:
        limiter = self.pipeline._limiters.get(name)
        if limiter is not None:
            limiter.total_tokens = expert.max_load * instances

    async def _probe(self, name: str) -> bool:
        """A one-token completion through the expert's first backend."""
        expert = self.pipeline.experts.get(name)
        if expert is None or not expert.backends:
            return True
        backend = expert.backends[0]
        await backend.complete(
            [{"role": "user", "content": "ping"}], settings=GenerationSettings(max_tokens=1)
        )
        return True
