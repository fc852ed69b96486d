"""Expert management: the event bus, ranking, A/B tests, scaling decisions and health checks."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable, Sequence

import anyio
import pytest
from structlog.testing import capture_logs

import moe_agents.management as management
from moe_agents import ConfigError, ExpertPolicy, InvalidInput, LLMExpert
from moe_agents.management import (
    ABTest,
    ABTracker,
    AutoScaler,
    Decision,
    Event,
    EventBus,
    HealthMonitor,
    HealthPolicy,
    Observation,
    RankingWeights,
    ScalingPolicy,
    Subscription,
    rank_experts,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def drain(sub: Subscription) -> list[Event]:
    """The events buffered in ``sub`` right now."""
    return [await sub.__anext__() for _ in range(sub.pending)]


def expert(
    name: str,
    *,
    ok: int = 0,
    failed: int = 0,
    latency_ms: float | None = None,
    load: int = 0,
    max_load: int = 4,
) -> LLMExpert:
    e = LLMExpert(name, policy=ExpertPolicy(max_load=max_load))
    e.stats.successes, e.stats.failures = ok, failed
    e.stats.total_queries = ok + failed
    e.stats.latency_ema_ms = latency_ms
    e.stats.current_load = load
    return e


class TestExports:
    def test_all_is_complete(self) -> None:
        """Every public name of moe_agents.management is in its __all__, and vice versa."""
        public = {n for n in vars(management) if not n.startswith("_")}
        modules = {n for n in public if type(getattr(management, n)).__name__ == "module"}
        assert set(management.__all__) == public - modules


class TestEventBus:
    async def test_subscriber_gets_events_in_order(self) -> None:
        """A subscriber receives every event published after it subscribed, in order, with its data."""
        bus = EventBus(clock=lambda: 42.0)
        bus.publish("expert.registered", expert="early")
        async with bus.subscribe() as events:
            bus.publish("expert.registered", expert="a")
            bus.publish("expert.removed", expert="b")
            got = await drain(events)
        assert [(e.kind, dict(e.data), e.ts) for e in got] == [
            ("expert.registered", {"expert": "a"}, 42.0),
            ("expert.removed", {"expert": "b"}, 42.0),
        ]

    @pytest.mark.parametrize(
        ("kinds", "expected"),
        [
            ({"health.unhealthy"}, ["health.unhealthy"]),
            ({"health.*"}, ["health.unhealthy", "health.healthy"]),
            ({"scale.up", "expert.removed"}, ["scale.up", "expert.removed"]),
            (None, ["health.unhealthy", "scale.up", "health.healthy", "expert.removed"]),
        ],
        ids=["exact", "wildcard", "several", "all"],
    )
    async def test_kinds_filter(self, kinds: set[str] | None, expected: list[str]) -> None:
        """A subscription gets only the kinds it asked for; ``prefix.*`` matches a family."""
        bus = EventBus()
        async with bus.subscribe(kinds) as events:
            for kind in ["health.unhealthy", "scale.up", "health.healthy", "expert.removed"]:
                bus.publish(kind, expert="x")
            assert [e.kind for e in await drain(events)] == expected

    async def test_full_buffer_drops_and_counts(self) -> None:
        """A subscriber that does not read keeps max_buffer events; the rest are dropped and counted."""
        bus = EventBus()
        async with bus.subscribe(max_buffer=2) as slow, bus.subscribe(max_buffer=10) as fast:
            for i in range(5):
                bus.publish("scale.up", i=i)
            assert (slow.pending, slow.dropped) == (2, 3)
            assert [e.data["i"] for e in await drain(slow)] == [0, 1]
            assert (fast.pending, fast.dropped) == (5, 0)
            bus.publish("scale.up", i=5)
            assert [e.data["i"] for e in await drain(slow)] == [5]

    async def test_waiting_consumer_is_woken(self) -> None:
        """A consumer task blocked on the next event gets it as soon as it is published."""
        bus = EventBus()
        got: list[str] = []
        with anyio.fail_after(5):
            async with bus.subscribe() as events, anyio.create_task_group() as tg:

                async def consume() -> None:
                    async for event in events:
                        got.append(event.data["expert"])
                        if len(got) == 3:
                            return

                tg.start_soon(consume)
                for name in "abc":
                    await anyio.wait_all_tasks_blocked()
                    bus.publish("expert.registered", expert=name)
        assert got == ["a", "b", "c"]

    async def test_closing_unsubscribes(self) -> None:
        """Leaving the subscription's block unsubscribes it; publishing afterwards reaches nobody."""
        bus = EventBus()
        async with bus.subscribe() as events:
            assert bus.subscriptions == 1
        assert bus.subscriptions == 0
        bus.publish("expert.removed", expert="a")
        assert [e async for e in events] == []

    async def test_bus_close_ends_iteration_after_buffered_events(self) -> None:
        """Closing the bus ends every subscription once its buffered events are read."""
        bus = EventBus()
        async with bus.subscribe() as events:
            bus.publish("scale.up", expert="a")
            bus.publish("scale.down", expert="a")
            bus.close()
            with anyio.fail_after(5):
                kinds = [e.kind async for e in events]
        assert kinds == ["scale.up", "scale.down"]
        assert bus.subscriptions == 0

    def test_publish_logs_the_event(self) -> None:
        """Every published event is also a structlog event of the same kind with its fields."""
        bus = EventBus()
        with capture_logs() as logs:
            event = bus.publish("expert.replaced", expert="coding", by="coding-v2")
        assert logs == [
            {"event": "expert.replaced", "expert": "coding", "by": "coding-v2", "log_level": "info"}
        ]
        with pytest.raises(TypeError):
            event.data["expert"] = "other"  # type: ignore[index]

    @pytest.mark.parametrize("kinds", ["health.healthy", None], ids=["string-kinds", "bad-buffer"])
    def test_bad_subscription_is_a_config_error(self, kinds: str | None) -> None:
        """A zero buffer, or a bare string for kinds, is a ConfigError."""
        with pytest.raises(ConfigError):
            EventBus().subscribe(kinds, max_buffer=0 if kinds is None else 1)


class TestRanking:
    def test_components(self) -> None:
        """Headroom, latency score and success rate follow their formulas."""
        [rank] = rank_experts([expert("a", ok=3, failed=1, latency_ms=1000.0, load=1, max_load=4)])
        assert rank.success_rate == 0.75
        assert rank.headroom == 0.75
        assert rank.latency_score == 0.5
        assert rank.trust is None
        assert rank.calls == 4
        assert rank.score == pytest.approx(0.5 * 0.75 + 0.3 * 0.75 + 0.2 * 0.5)

    def test_unknown_latency_scores_one_and_overload_has_no_headroom(self) -> None:
        """An expert with no finished call has latency score 1; load past max_load is 0 headroom."""
        [rank] = rank_experts([expert("a", load=6, max_load=4)])
        assert (rank.latency_score, rank.headroom, rank.success_rate) == (1.0, 0.0, 1.0)

    def test_best_first(self) -> None:
        """A reliable, idle, fast expert ranks above a failing, busy or slow one."""
        experts = [
            expert("failing", ok=1, failed=9, latency_ms=200.0),
            expert("busy", ok=10, latency_ms=200.0, load=4),
            expert("slow", ok=10, latency_ms=20_000.0),
            expert("good", ok=10, latency_ms=200.0),
        ]
        names = [r.name for r in rank_experts(experts)]
        assert names[0] == "good"
        assert names[-1] == "failing"

    def test_trust_counts_only_where_given(self) -> None:
        """The trust weight joins the normalisation only for experts that have a trust value."""
        weights = RankingWeights(success=1.0, headroom=0.0, latency=0.0, trust=1.0)
        ranks = rank_experts([expert("a"), expert("b"), expert("c")], weights, trust={"b": 0.0, "c": 0.6})
        assert {r.name: r.score for r in ranks} == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.8})
        assert [r.name for r in ranks] == ["a", "c", "b"]
        assert ranks[1].trust == 0.6

    def test_ties_break_by_name(self) -> None:
        """Experts with equal scores come in name order."""
        assert [r.name for r in rank_experts([expert("b"), expert("c"), expert("a")])] == ["a", "b", "c"]

    @pytest.mark.parametrize(
        "weights",
        [
            {"success": -0.1},
            {"success": 0.0, "headroom": 0.0, "latency": 0.0, "trust": 0.0},
            {"latency": math.nan},
            {"trust": math.inf},
        ],
        ids=["negative", "all-zero", "nan", "inf"],
    )
    def test_bad_weights_are_a_config_error(self, weights: dict[str, float]) -> None:
        """Weights must be finite, non-negative and not all zero."""
        with pytest.raises(ConfigError):
            RankingWeights(**weights)

    @pytest.mark.parametrize("value", [1.5, -0.1, math.nan], ids=["above", "below", "nan"])
    def test_trust_outside_unit_interval_is_invalid(self, value: float) -> None:
        """A trust value outside [0, 1] is an InvalidInput."""
        with pytest.raises(InvalidInput):
            rank_experts([expert("a")], trust={"a": value})


class TestABTest:
    @pytest.mark.parametrize("fraction", [0.2, 0.5], ids=["20%", "50%"])
    @pytest.mark.parametrize("keyed", [False, True], ids=["drawn", "keyed"])
    def test_split_matches_fraction(self, fraction: float, keyed: bool) -> None:
        """Over 10,000 requests the treatment's share is within 0.015 of the fraction, and counted."""
        tracker = ABTracker([ABTest("t", "coding", "coding-v2", fraction=fraction, seed=7)])
        variants = [tracker.assign("t", f"session-{i}" if keyed else None) for i in range(10_000)]
        share = variants.count("coding-v2") / len(variants)
        assert abs(share - fraction) < 0.015
        report = tracker.report("t")
        assert report.treatment.assigned == variants.count("coding-v2")
        assert report.control.assigned == variants.count("coding")

    def test_keyed_assignment_is_sticky(self) -> None:
        """The same key gets the same variant every time, in any tracker with the same seed."""
        test = ABTest("t", "a", "b", seed=3)
        first, second = ABTracker([test]), ABTracker([test])
        keys = [f"s{i}" for i in range(200)]
        chosen = [first.assign("t", k) for k in keys]
        assert [first.assign("t", k) for k in keys] == chosen
        assert [second.assign("t", k) for k in reversed(keys)] == chosen[::-1]
        assert {"a", "b"} == set(chosen)

    def test_seed_changes_keyed_assignment(self) -> None:
        """A different seed reshuffles which keys get which variant."""
        keys = [f"s{i}" for i in range(200)]
        one = ABTracker([ABTest("t", "a", "b", seed=1)])
        two = ABTracker([ABTest("t", "a", "b", seed=2)])
        assert [one.assign("t", k) for k in keys] != [two.assign("t", k) for k in keys]

    def test_drawn_assignment_is_reproducible(self) -> None:
        """Without keys, two trackers with the same seed draw the same sequence."""
        test = ABTest("t", "a", "b", seed=11)
        one, two = ABTracker([test]), ABTracker([test])
        assert [one.assign("t") for _ in range(100)] == [two.assign("t") for _ in range(100)]

    def test_detects_a_known_difference(self) -> None:
        """Bernoulli 0.6 vs 0.7 over 5,000 each: significant, and the true 0.1 lies inside the CI."""
        rng = random.Random(1)
        tracker = ABTracker([ABTest("t", "a", "b")])
        for _ in range(5000):
            tracker.record("t", "a", float(rng.random() < 0.6))
            tracker.record("t", "b", float(rng.random() < 0.7))
        report = tracker.report("t")
        assert report.significant
        assert report.ci is not None and report.difference is not None
        assert report.ci[0] < 0.1 < report.ci[1]
        assert report.ci[0] < report.difference < report.ci[1]
        assert report.control.mean == pytest.approx(0.6, abs=0.03)
        assert report.treatment.scored == 5000

    def test_no_difference_covers_zero_most_of_the_time(self) -> None:
        """With equal variants the 95% CI covers 0 in at least 90% of 200 repeated experiments."""
        rng = random.Random(2)
        covered = 0
        for _ in range(200):
            tracker = ABTracker([ABTest("t", "a", "b")])
            for _ in range(300):
                tracker.record("t", "a", float(rng.random() < 0.5))
                tracker.record("t", "b", float(rng.random() < 0.5))
            ci = tracker.report("t").ci
            assert ci is not None
            covered += ci[0] <= 0.0 <= ci[1]
        assert covered >= 180

    def test_interval_narrows_with_less_confidence(self) -> None:
        """A 90% interval lies inside the 99% one around the same difference."""
        tracker = ABTracker([ABTest("t", "a", "b")])
        for a, b in [(0.2, 0.9), (0.4, 0.5), (0.6, 0.7), (0.3, 0.8)]:
            tracker.record("t", "a", a)
            tracker.record("t", "b", b)
        narrow, wide = tracker.report("t", confidence=0.9), tracker.report("t", confidence=0.99)
        assert narrow.ci is not None and wide.ci is not None
        assert wide.ci[0] < narrow.ci[0] < narrow.ci[1] < wide.ci[1]
        assert narrow.difference == pytest.approx(0.35)

    def test_report_before_enough_scores(self) -> None:
        """With one score per variant there is a difference but no interval, and nothing significant."""
        tracker = ABTracker([ABTest("t", "a", "b")])
        empty = tracker.report("t")
        assert (empty.difference, empty.ci, empty.significant, empty.control.mean) == (
            None,
            None,
            False,
            None,
        )
        tracker.record("t", "a", 0.2)
        tracker.record("t", "b", 0.9)
        one = tracker.report("t")
        assert one.difference == pytest.approx(0.7)
        assert (one.ci, one.significant, one.control.stdev) == (None, False, None)

    def test_test_for_and_remove(self) -> None:
        """An expert's test is found by either variant; a removed test is gone and reported."""
        tracker = ABTracker([ABTest("t", "a", "b")])
        assert tracker.test_for("b") == tracker.test_for("a") == ABTest("t", "a", "b")
        assert tracker.test_for("c") is None
        assert tracker.remove("t").test == "t"
        assert tracker.tests == {}

    @pytest.mark.parametrize(
        "call",
        [
            lambda t: t.record("t", "c", 0.5),
            lambda t: t.record("t", "a", 1.5),
            lambda t: t.record("t", "a", math.nan),
        ],
        ids=["unknown-variant", "score-above-1", "nan-score"],
    )
    def test_bad_record_is_invalid_input(self, call: Callable[[ABTracker], None]) -> None:
        """Scores outside [0, 1] and unknown variants are InvalidInput."""
        with pytest.raises(InvalidInput):
            call(ABTracker([ABTest("t", "a", "b")]))

    @pytest.mark.parametrize(
        "make",
        [
            lambda: ABTest("t", "a", "b", fraction=0.0),
            lambda: ABTest("t", "a", "b", fraction=1.0),
            lambda: ABTest("t", "a", "a"),
            lambda: ABTracker([ABTest("t", "a", "b"), ABTest("t", "c", "d")]),
            lambda: ABTracker().assign("missing"),
            lambda: ABTracker([ABTest("t", "a", "b")]).report("t", confidence=1.0),
        ],
        ids=["fraction-0", "fraction-1", "same-variants", "duplicate-test", "unknown-test", "confidence-1"],
    )
    def test_bad_configuration_is_a_config_error(self, make: Callable[[], object]) -> None:
        """Impossible tests, duplicates, unknown tests and impossible confidence levels are ConfigErrors."""
        with pytest.raises(ConfigError):
            make()


def play(scaler: AutoScaler, trace: Sequence[tuple[float, float]], *, instances: int) -> list[Decision]:
    """Feeds (load, success) observations of expert "e", applying each decision's instance count."""
    decisions = []
    for load, success in trace:
        decision = scaler.observe(Observation("e", load, success, instances))
        if decision is not None:
            decisions.append(decision)
            instances = decision.instances
    return decisions


class TestAutoScaler:
    def test_rising_load_scales_a_good_expert_up_to_max(self) -> None:
        """A busy, successful expert gains one instance per full window, and stops at max_instances."""
        scaler = AutoScaler(ScalingPolicy(max_instances=3, window=3))
        trace = [(0.3, 0.95)] * 3 + [(0.9, 0.95)] * 15
        decisions = play(scaler, trace, instances=1)
        assert [(d.action, d.instances) for d in decisions] == [("scale_up", 2), ("scale_up", 3)]
        assert all(d.event_kind == "scale.up" and d.expert == "e" for d in decisions)

    def test_window_resets_after_a_decision(self) -> None:
        """After a decision the next one needs a full window of new observations (hysteresis)."""
        scaler = AutoScaler(ScalingPolicy(window=3))
        when = [i for i in range(9) if scaler.observe(Observation("e", 1.0, 1.0, 1)) is not None]
        assert when == [2, 5, 8]

    def test_idle_scales_down_to_min(self) -> None:
        """An idle expert loses one instance per full window, down to min_instances."""
        scaler = AutoScaler(ScalingPolicy(min_instances=1, max_instances=4, window=2))
        decisions = play(scaler, [(0.05, 1.0)] * 20, instances=4)
        assert [(d.action, d.instances, d.event_kind) for d in decisions] == [
            ("scale_down", 3, "scale.down"),
            ("scale_down", 2, "scale.down"),
            ("scale_down", 1, "scale.down"),
        ]

    def test_overloaded_bad_expert_does_not_scale_up(self) -> None:
        """An overloaded expert below min_success gets no more instances (and is not disabled)."""
        scaler = AutoScaler(ScalingPolicy(min_success=0.8, performance_threshold=0.5))
        assert play(scaler, [(1.0, 0.6)] * 50, instances=1) == []
        assert not scaler.disabled("e")

    def test_moderate_load_changes_nothing(self) -> None:
        """Load between the two thresholds yields no decision."""
        assert play(AutoScaler(), [(0.5, 1.0)] * 50, instances=2) == []

    def test_sustained_low_success_disables_exactly_once(self) -> None:
        """underperforming_window low observations in a row disable the expert once, and only once."""
        scaler = AutoScaler(ScalingPolicy(underperforming_window=20))
        decisions = play(scaler, [(0.5, 0.3)] * 60, instances=2)
        assert [(d.action, d.instances, d.event_kind) for d in decisions] == [
            ("disable", 0, "expert.disabled")
        ]
        assert scaler.disabled("e")

    def test_brief_dip_does_not_disable(self) -> None:
        """A run of low success shorter than the window, broken by a good observation, disables nothing."""
        scaler = AutoScaler(ScalingPolicy(underperforming_window=20))
        trace = [(0.5, 0.3)] * 19 + [(0.5, 0.9)] + [(0.5, 0.3)] * 19
        assert play(scaler, trace, instances=1) == []
        assert not scaler.disabled("e")

    def test_reset_forgets_a_disabled_expert(self) -> None:
        """After reset, a disabled expert is observed afresh."""
        scaler = AutoScaler(ScalingPolicy(underperforming_window=2, window=2))
        play(scaler, [(0.5, 0.1)] * 2, instances=1)
        assert scaler.disabled("e")
        scaler.reset("e")
        assert not scaler.disabled("e")
        assert [d.action for d in play(scaler, [(1.0, 1.0)] * 2, instances=1)] == ["scale_up"]

    def test_experts_are_tracked_separately(self) -> None:
        """One expert's observations never fill another's window."""
        scaler = AutoScaler(ScalingPolicy(window=2))
        assert scaler.observe(Observation("a", 1.0, 1.0, 1)) is None
        assert scaler.observe(Observation("b", 1.0, 1.0, 1)) is None
        decision = scaler.observe(Observation("a", 1.0, 1.0, 1))
        assert decision is not None and decision.expert == "a"

    def test_observation_of_an_expert(self) -> None:
        """Observation.of reads load as current_load / max_load and the success rate from stats."""
        obs = Observation.of(expert("x", ok=3, failed=1, load=3, max_load=4), instances=2)
        assert obs == Observation("x", 0.75, 0.75, 2)

    @pytest.mark.parametrize(
        "policy",
        [
            {"min_instances": 0},
            {"min_instances": 3, "max_instances": 2},
            {"scale_up_load": 0.2, "scale_down_load": 0.2},
            {"window": 0},
            {"min_success": 1.5},
            {"underperforming_window": 0},
        ],
        ids=["min-0", "min-above-max", "thresholds-cross", "window-0", "success-above-1", "underperf-0"],
    )
    def test_bad_policy_is_a_config_error(self, policy: dict[str, float]) -> None:
        """Impossible policies are ConfigErrors."""
        with pytest.raises(ConfigError):
            ScalingPolicy(**policy)  # type: ignore[arg-type]

    def test_bad_observation_is_invalid_input(self) -> None:
        """A negative load or a success rate outside [0, 1] is an InvalidInput."""
        with pytest.raises(InvalidInput):
            Observation("e", -1.0, 0.5, 1)
        with pytest.raises(InvalidInput):
            Observation("e", 0.5, 1.5, 1)


class ScriptedProbe:
    """Answers each probe with the next scripted result for that expert (True when none is left);
    a result may be a callable awaited instead."""

    def __init__(self, script: dict[str, list[bool | Callable[[], Awaitable[bool]]]]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def __call__(self, name: str) -> bool:
        self.calls.append(name)
        steps = self.script.get(name, [])
        step = steps.pop(0) if steps else True
        return await step() if callable(step) else step


class TestHealthMonitor:
    async def test_transitions_after_thresholds_are_published(self) -> None:
        """Two failed probes make an expert unhealthy, one success makes it healthy; both published."""
        clock, bus = Clock(), EventBus()
        probe = ScriptedProbe({"remote": [False, False, False, True, True]})
        monitor = HealthMonitor(
            HealthPolicy(idle_s=10.0, failures_to_unhealthy=2, successes_to_healthy=1),
            probe=probe,
            bus=bus,
            clock=clock,
        )
        seen = []
        async with bus.subscribe({"health.*"}) as events:
            for _ in range(5):
                await monitor.check(["remote"])
                seen.append(monitor.healthy("remote"))
                clock.now += 10.0
            got = await drain(events)
        assert seen == [True, False, False, True, True]
        assert [(e.kind, e.data["expert"], e.data["source"]) for e in got] == [
            ("health.unhealthy", "remote", "probe"),
            ("health.healthy", "remote", "probe"),
        ]
        assert got[0].data["failures"] == 2
        assert monitor.status() == {"remote": "healthy"}

    async def test_only_idle_experts_are_probed(self) -> None:
        """An expert heard from within idle_s is not probed; never-seen and idle experts are."""
        clock = Clock()
        probe = ScriptedProbe({})
        monitor = HealthMonitor(HealthPolicy(idle_s=10.0), probe=probe, clock=clock)
        monitor.note_call("busy", ok=True)
        clock.now += 5.0
        await monitor.check(["busy", "new"])
        assert probe.calls == ["new"]
        clock.now += 5.0
        await monitor.check(["busy", "new"])
        assert probe.calls == ["new", "busy"]
        clock.now += 9.0
        monitor.note_call("new", ok=True)
        await monitor.check(["busy", "new"])
        assert probe.calls == ["new", "busy"]

    async def test_real_calls_count_as_probes(self) -> None:
        """Failed real calls make an expert unhealthy and a good one heals it, without any probe."""
        bus = EventBus()
        probe = ScriptedProbe({})
        monitor = HealthMonitor(
            HealthPolicy(failures_to_unhealthy=2, successes_to_healthy=2), probe=probe, bus=bus, clock=Clock()
        )
        async with bus.subscribe() as events:
            monitor.note_call("x", ok=False)
            assert monitor.healthy("x")
            monitor.note_call("x", ok=False)
            assert monitor.status() == {"x": "unhealthy"}
            monitor.note_call("x", ok=True)
            assert not monitor.healthy("x")
            monitor.note_call("x", ok=True)
            assert monitor.healthy("x")
            got = await drain(events)
        assert [(e.kind, e.data["source"]) for e in got] == [
            ("health.unhealthy", "call"),
            ("health.healthy", "call"),
        ]
        assert probe.calls == []

    async def test_hanging_probe_times_out_as_a_failure(self) -> None:
        """A probe that never returns fails after timeout_s; its sibling's result still counts."""

        async def hang() -> bool:
            await anyio.sleep_forever()
            return True

        monitor = HealthMonitor(
            HealthPolicy(failures_to_unhealthy=1, timeout_s=0.05),
            probe=ScriptedProbe({"stuck": [hang], "fine": [True]}),
            clock=Clock(),
        )
        with capture_logs() as logs, anyio.fail_after(5):
            await monitor.check(["stuck", "fine"])
        assert monitor.status() == {"stuck": "unhealthy", "fine": "healthy"}
        [unhealthy] = [e for e in logs if e["event"] == "health.unhealthy"]
        assert "timed out" in unhealthy["error"]

    async def test_raising_probe_is_a_failure(self) -> None:
        """A probe that raises counts as a failed probe, and the error is kept."""

        async def boom() -> bool:
            raise ConnectionError("refused")

        bus = EventBus()
        monitor = HealthMonitor(
            HealthPolicy(failures_to_unhealthy=1), probe=ScriptedProbe({"x": [boom]}), bus=bus, clock=Clock()
        )
        async with bus.subscribe() as events:
            await monitor.check(["x"])
            [event] = await drain(events)
        assert (event.kind, event.data["error"]) == ("health.unhealthy", "ConnectionError: refused")

    async def test_probes_run_concurrently(self) -> None:
        """Probes of several experts overlap: each waits for the other to start, and both succeed."""
        started = 0
        both = anyio.Event()

        async def rendezvous() -> bool:
            nonlocal started
            started += 1
            if started == 2:
                both.set()
            await both.wait()
            return True

        monitor = HealthMonitor(
            HealthPolicy(failures_to_unhealthy=1, timeout_s=5.0),
            probe=ScriptedProbe({"a": [rendezvous], "b": [rendezvous]}),
            clock=Clock(),
        )
        await monitor.check(["a", "b"])
        assert monitor.status() == {"a": "healthy", "b": "healthy"}

    async def test_run_checks_every_interval(self) -> None:
        """run() keeps checking in the background until cancelled."""
        done = anyio.Event()
        probe = ScriptedProbe({})

        def names_fn() -> Sequence[str]:
            if len(probe.calls) >= 3:
                done.set()
            return ["x"]

        monitor = HealthMonitor(HealthPolicy(interval_s=0.001, idle_s=0.0), probe=probe, clock=Clock())
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor.run, names_fn)
                await done.wait()
                tg.cancel_scope.cancel()
        assert probe.calls[:3] == ["x", "x", "x"]

    async def test_forget_drops_an_expert(self) -> None:
        """A forgotten expert is healthy again and absent from the status."""
        monitor = HealthMonitor(HealthPolicy(failures_to_unhealthy=1), probe=ScriptedProbe({}), clock=Clock())
        monitor.note_call("x", ok=False)
        assert not monitor.healthy("x")
        monitor.forget("x")
        assert monitor.healthy("x") and monitor.status() == {}

    @pytest.mark.parametrize(
        "policy",
        [{"interval_s": 0.0}, {"idle_s": -1.0}, {"failures_to_unhealthy": 0}, {"timeout_s": 0.0}],
        ids=["interval-0", "idle-negative", "failures-0", "timeout-0"],
    )
    def test_bad_policy_is_a_config_error(self, policy: dict[str, float]) -> None:
        """Impossible health policies are ConfigErrors."""
        with pytest.raises(ConfigError):
            HealthPolicy(**policy)  # type: ignore[arg-type]
