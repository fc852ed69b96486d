"""Residency: a byte budget, serialised loads, LRU eviction of unpinned models, swap costs through
``permission()``; and the residency trace benchmark."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from tiny_models import bundled_tokenizer, decoder_sizes

from moe_agents.backends import GenerationSettings, TransformersBackend
from moe_agents.errors import ConfigError, RunError
from moe_agents.evaluation.residency_trace import DEFAULT_ZOO, plot_residency, residency_trace
from moe_agents.residency import BLOCKED_COST_S, GB, Residency, ResidencyConfig


@dataclass
class World:
    """What the fake models really hold, checked from inside their loads."""

    budget: int
    models: list[FakeModel] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    loading: int = 0
    max_loading: int = 0
    max_loaded_bytes: int = 0

    def loaded_bytes(self) -> int:
        return sum(m.size for m in self.models if m.loaded)


class FakeModel:
    """A model of ``size`` bytes whose load takes ``checkpoints`` scheduler turns and ``load_s`` on
    the fake clock; it records enter/exit of every load and unload in its world."""

    def __init__(
        self,
        name: str,
        size: int,
        world: World,
        *,
        checkpoints: int = 3,
        clock: FakeClock | None = None,
        load_s: float = 0.0,
        nbytes_after_load: int | None = None,
        fail: bool = False,
    ) -> None:
        self.name = name
        self.size = size
        self.world = world
        self.checkpoints = checkpoints
        self.clock = clock
        self.load_s = load_s
        self.nbytes_after_load = nbytes_after_load
        self.fail = fail
        self.loaded = False
        self.loads = 0
        self.unloads = 0
        world.models.append(self)

    @property
    def nbytes(self) -> int:
        if self.nbytes_after_load is None:
            return self.size
        return self.nbytes_after_load if self.loaded else 0

    async def load(self) -> None:
        w = self.world
        w.events.append(("enter", self.name))
        w.loading += 1
        w.max_loading = max(w.max_loading, w.loading)
        try:
            for _ in range(self.checkpoints):
                await anyio.lowlevel.checkpoint()
            if self.fail:
                raise RuntimeError("disk on fire")
            if self.nbytes_after_load is not None:
                self.size = self.nbytes_after_load
            assert w.loaded_bytes() + self.size <= w.budget, "loaded past the budget"
            if self.clock is not None:
                self.clock.now += self.load_s
            self.loaded = True
            self.loads += 1
            w.max_loaded_bytes = max(w.max_loaded_bytes, w.loaded_bytes())
        finally:
            w.loading -= 1
            w.events.append(("exit", self.name))

    async def unload(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self.loaded:
            self.unloads += 1
        self.loaded = False


class FakeClock:
    """Seconds that pass only when a test or a fake load says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(
    sizes: dict[str, int], budget: int, *, wait_s: float | None = 5.0, **config: float
) -> tuple[Residency, World, dict[str, FakeModel]]:
    """A residency over fake models of the given sizes."""
    world = World(budget)
    cfg = ResidencyConfig(budget_bytes=budget, wait_s=wait_s, **config)  # type: ignore[arg-type]
    residency = Residency(cfg, clock=FakeClock())  # loads take no time: the guess stays
    models = {name: FakeModel(name, size, world) for name, size in sizes.items()}
    for model in models.values():
        residency.register(model)
    return residency, world, models


async def use(residency: Residency, *names: str) -> None:
    """Uses each model in turn (one at a time)."""
    for name in names:
        async with residency.use(name):
            pass


class TestPermission:
    async def test_seed_worked_example(self) -> None:
        """A resident model at 0.8 (0.8·1·1.2 = 0.96) beats a 9 s load at 0.9 (0.9·0.1·1 = 0.09)."""
        residency, _, _ = make({"small": GB, "big": 9 * GB}, 10 * GB)
        await use(residency, "small")
        cheapness, persistence, perm = residency.scores(["small", "big"], np.array([0.8, 0.9]))
        assert cheapness == pytest.approx([1.0, 0.1])
        assert persistence == pytest.approx([1.2, 1.0])
        assert perm == pytest.approx([0.96, 0.09])
        assert residency.choose(["small", "big"], np.array([0.8, 0.9])) == "small"

    async def test_swap_cost_is_bytes_over_bandwidth(self) -> None:
        """A non-resident model costs its bytes over the bandwidth in seconds; a resident one 0."""
        residency, _, _ = make({"a": 2 * GB, "b": 3 * GB}, 10 * GB, bandwidth_bytes_per_s=0.5 * GB)
        assert residency.swap_cost(["a", "b"]) == pytest.approx([4.0, 6.0])
        await use(residency, "a")
        assert residency.swap_cost(["a", "b"]) == pytest.approx([0.0, 6.0])
        assert residency.resident(["a", "b"]).tolist() == [True, False]

    def test_swap_cost_weight_scales_cost(self) -> None:
        """``swap_cost_weight`` multiplies the swap seconds that enter ``cheapness``."""
        residency, _, _ = make({"a": 9 * GB}, 10 * GB, swap_cost_weight=0.1)
        cheapness, _, _ = residency.scores(["a"], np.array([1.0]))
        assert cheapness == pytest.approx([1 / (1 + 0.9)])

    def test_without_residency_the_better_model_wins(self) -> None:
        """With nothing resident, choose() ranks by expertise × cheapness."""
        residency, _, _ = make({"a": GB, "b": GB}, 10 * GB)
        assert residency.choose(["a", "b"], np.array([0.5, 0.7])) == "b"

    async def test_spent_swap_budget_blocks_non_resident_models(self) -> None:
        """Once the loading seconds in the window reach the swap budget, non-resident models cost
        ``BLOCKED_COST_S``; when the window has passed, their cost is bytes / bandwidth again."""
        clock = FakeClock()
        world = World(10 * GB)
        config = ResidencyConfig(budget_bytes=10 * GB, swap_budget_s=2.0, swap_window_s=60.0)
        residency = Residency(config, clock=clock)
        for name in ("a", "b"):
            residency.register(FakeModel(name, 2 * GB, world, clock=clock, load_s=2.5))
        await use(residency, "a")
        assert residency.swap_budget_spent
        assert residency.swap_cost(["a", "b"]).tolist() == [0.0, BLOCKED_COST_S]
        assert residency.choose(["a", "b"], np.array([0.1, 0.9])) == "a"
        clock.now += 61.0
        assert not residency.swap_budget_spent
        assert residency.swap_cost(["b"]) == pytest.approx([2 / 0.8])  # measured: 2 GB in 2.5 s


class TestBudget:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        sizes=st.lists(st.integers(1, 10), min_size=2, max_size=6),
        slack=st.integers(0, 12),
        batches=st.lists(
            st.lists(st.tuples(st.integers(0, 5), st.integers(0, 4)), min_size=1, max_size=3),
            min_size=1,
            max_size=12,
        ),
    )
    def test_resident_bytes_never_exceed_the_budget(
        self, sizes: list[int], slack: int, batches: list[list[tuple[int, int]]]
    ) -> None:
        """Over random (partly concurrent) uses of models of random sizes, the bytes really loaded
        never exceed the budget, checked inside every load, and loads never overlap."""
        budget = max(sizes) + slack
        residency, world, _ = make({f"m{i}": s for i, s in enumerate(sizes)}, budget, wait_s=None)

        async def one(name: str, hold: int) -> None:
            async with residency.use(name) as model:
                assert model.loaded  # type: ignore[attr-defined]
                for _ in range(hold):
                    assert residency.used_bytes <= budget
                    await anyio.lowlevel.checkpoint()

        async def run() -> None:
            for batch in batches:
                async with anyio.create_task_group() as tg:
                    for index, hold in batch:
                        tg.start_soon(one, f"m{index % len(sizes)}", hold)
                assert residency.used_bytes == world.loaded_bytes() <= budget

        anyio.run(run)
        assert world.max_loaded_bytes <= budget
        assert world.max_loading <= 1

    @pytest.mark.parametrize(
        ("sizes", "size_bytes", "match"),
        [
            ({"a": 11}, None, "exceeds the budget"),
            ({"a": 1}, 0, "unknown"),
        ],
        ids=["oversize", "unknown-size"],
    )
    def test_register_rejects(self, sizes: dict[str, int], size_bytes: int | None, match: str) -> None:
        """A model bigger than the whole budget, or of unknown size, cannot be registered."""
        residency = Residency(ResidencyConfig(budget_bytes=10))
        ((name, size),) = sizes.items()
        model = FakeModel(name, size, World(10), nbytes_after_load=size if size_bytes == 0 else None)
        with pytest.raises(ConfigError, match=match):
            residency.register(model, size_bytes=size_bytes)

    def test_register_rejects_duplicate_names(self) -> None:
        """Two models cannot share a name; registering the same model again changes nothing."""
        residency, world, models = make({"a": 1}, 10)
        with pytest.raises(ConfigError, match="twice"):
            residency.register(FakeModel("a", 1, world))
        cost = residency.swap_cost(["a"])
        residency.register(models["a"], size_bytes=7)
        assert residency.names == ("a",)
        assert residency.swap_cost(["a"]) == cost  # the size stays as first registered

    async def test_unknown_model(self) -> None:
        """Using a model that was never registered is a configuration error."""
        residency, _, _ = make({"a": 1}, 10)
        with pytest.raises(ConfigError, match="unknown model 'b'"):
            await use(residency, "b")

    @pytest.mark.parametrize(
        ("field", "value"),
        [("budget_bytes", 0), ("hysteresis", -0.1), ("bandwidth_bytes_per_s", 0.0), ("wait_s", 0.0)],
        ids=["budget", "hysteresis", "bandwidth", "wait"],
    )
    def test_config_validates(self, field: str, value: float) -> None:
        """Out-of-range settings are refused with the field named."""
        kwargs: dict[str, float] = {"budget_bytes": 10, field: value}
        with pytest.raises(ConfigError, match=field):
            ResidencyConfig(**kwargs)  # type: ignore[arg-type]

    async def test_size_is_re_read_after_load(self) -> None:
        """A model declared with an estimate is accounted with the ``nbytes`` it reports once loaded,
        and models are evicted to keep the budget."""
        world = World(10)
        residency = Residency(ResidencyConfig(budget_bytes=10))
        residency.register(FakeModel("a", 4, world))
        grows = FakeModel("b", 1, world, nbytes_after_load=7)
        world.budget = 100  # the fake's own check would trip on purpose here; the residency's must not
        residency.register(grows, size_bytes=5)
        await use(residency, "a", "b")
        assert residency.size("b") == 7
        assert residency.resident(["a", "b"]).tolist() == [False, True]
        assert residency.used_bytes == 7

    async def test_model_measured_over_budget_is_unloaded(self) -> None:
        """A model that turns out bigger than the whole budget is unloaded and refused."""
        world = World(100)
        residency = Residency(ResidencyConfig(budget_bytes=10))
        model = FakeModel("a", 1, world, nbytes_after_load=20)
        residency.register(model, size_bytes=5)
        with pytest.raises(ConfigError, match="more than the budget"):
            await use(residency, "a")
        assert not model.loaded
        assert residency.used_bytes == 0

    async def test_failed_load_leaves_nothing_resident(self) -> None:
        """A load that fails propagates, leaves the model unpinned and not resident."""
        world = World(10)
        residency = Residency(ResidencyConfig(budget_bytes=10))
        residency.register(FakeModel("a", 4, world, fail=True))
        with pytest.raises(RuntimeError, match="disk on fire"):
            await use(residency, "a")
        assert residency.pins("a") == 0
        assert residency.used_bytes == 0
        assert residency.metrics.swaps == 0


class TestConcurrency:
    async def test_loads_are_serialised(self) -> None:
        """Concurrent uses of different models never overlap their loads."""
        residency, world, _ = make({"a": 1, "b": 1, "c": 1}, 3)
        async with anyio.create_task_group() as tg:
            for name in ("a", "b", "c"):
                tg.start_soon(use, residency, name)
        assert world.max_loading == 1
        assert [kind for kind, _ in world.events] == ["enter", "exit"] * 3
        assert all(world.events[i][1] == world.events[i + 1][1] for i in range(0, 6, 2))

    async def test_pinned_models_are_never_evicted(self) -> None:
        """A use that needs room waits while the others are pinned, then evicts only the released one."""
        residency, _, models = make({"a": 1, "b": 1, "c": 1}, 2)
        release_a, release_b = anyio.Event(), anyio.Event()

        async def hold(name: str, release: anyio.Event) -> None:
            async with residency.use(name):
                await release.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, "a", release_a)
            tg.start_soon(hold, "b", release_b)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(use, residency, "c")
            await anyio.wait_all_tasks_blocked()
            assert not models["c"].loaded
            assert models["a"].loaded and models["b"].loaded
            release_a.set()
            await anyio.wait_all_tasks_blocked()
            assert models["c"].loaded and models["b"].loaded
            assert not models["a"].loaded
            release_b.set()
        assert residency.pins("b") == 0

    async def test_gives_up_when_everything_stays_pinned(self) -> None:
        """When the pinned models leave no room for ``wait_s``, use() raises a RunError naming them."""
        residency, _, _ = make({"a": 1, "b": 1}, 1, wait_s=0.05)
        async with residency.use("a"):
            with pytest.raises(RunError, match=r"does not fit.*pinned: \['a'\]"):
                await use(residency, "b")
        assert residency.resident(["a", "b"]).tolist() == [True, False]


class TestLruAndMetrics:
    async def test_least_recently_used_is_evicted(self) -> None:
        """The model used least recently is the one unloaded to make room, and it is logged."""
        residency, _, models = make({"a": 1, "b": 1, "c": 1, "d": 1}, 3)
        with capture_logs() as logs:
            await use(residency, "a", "b", "c", "a", "d")
        assert [n for n, m in models.items() if m.loaded] == ["a", "c", "d"]
        assert [e["model"] for e in logs if e["event"] == "residency.evicted"] == ["b"]

    async def test_metrics_count_hits_misses_and_swaps(self) -> None:
        """Counters and rates follow the uses: hits for resident models, a swap per load."""
        residency, _, _ = make({"a": 2, "b": 3}, 4)
        await use(residency, "a", "a", "b", "a")
        m = residency.metrics
        assert (m.selections, m.hits, m.misses, m.swaps, m.evictions) == (4, 1, 3, 3, 2)
        assert m.bytes_loaded == 2 + 3 + 2
        assert m.hit_rate == pytest.approx(0.25)
        assert m.swaps_per_selection == pytest.approx(0.75)
        residency.note_selection("a", "b")
        residency.note_selection("a", "a")
        residency.note_selection("a", None)
        assert (m.compared, m.quality_costs, m.quality_cost_rate) == (2, 1, 0.5)
        assert set(m.to_dict()) >= {"hit_rate", "swaps_per_selection", "bytes_loaded", "load_s"}

    async def test_bandwidth_is_measured_from_loads(self) -> None:
        """Before a load the configured guess is used; after, bytes over measured seconds."""
        clock = FakeClock()
        world = World(10 * GB)
        residency = Residency(ResidencyConfig(budget_bytes=10 * GB), clock=clock)
        residency.register(FakeModel("a", 2 * GB, world, clock=clock, load_s=4.0))
        residency.register(FakeModel("b", 1 * GB, world, clock=clock, load_s=1.0))
        assert residency.bandwidth == pytest.approx(1e9)
        await use(residency, "a")
        assert residency.bandwidth == pytest.approx(0.5e9)
        assert residency.swap_cost(["b"]) == pytest.approx([2.0])
        await use(residency, "b")
        assert residency.bandwidth == pytest.approx(3e9 / 5.0)
        assert residency.metrics.load_s == pytest.approx(5.0)

    async def test_simulation_calls_no_loads(self) -> None:
        """In simulation the models are never loaded; load time is accounted as bytes / bandwidth."""
        world = World(10)
        residency = Residency(ResidencyConfig(budget_bytes=4 * GB), simulate=True)
        model = FakeModel("a", 3 * GB, world)
        residency.register(model)
        await use(residency, "a")
        assert model.loads == 0
        assert residency.resident(["a"]).tolist() == [True]
        assert residency.metrics.load_s == pytest.approx(3.0)

    async def test_clear_unloads_unpinned(self) -> None:
        """clear() unloads every resident model that is not in use."""
        residency, _, models = make({"a": 1, "b": 1}, 2)
        await use(residency, "a")
        async with residency.use("b"):
            await residency.clear()
            assert residency.resident(["a", "b"]).tolist() == [False, True]
        assert not models["a"].loaded


@pytest.fixture(scope="module")
def tiny_llamas(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], int]:
    """Two saved 2-layer Llamas with seeded random weights; their folders and size in bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bundled_tokenizer()
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    config = LlamaConfig(**decoder_sizes(tokenizer, max_position_embeddings=1024))
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        path = tmp_path_factory.mktemp(f"llama-{seed}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return paths, nbytes


class TestTransformers:
    async def test_real_models_are_loaded_and_evicted(self, tiny_llamas: tuple[list[Path], int]) -> None:
        """Two real tiny models under a budget that holds one: each is loaded with its measured
        ``nbytes``, answers, and is evicted (its weights freed) when the other is needed."""
        paths, nbytes = tiny_llamas
        residency = Residency(ResidencyConfig(budget_bytes=int(nbytes * 1.5)))
        a, b = (TransformersBackend(p, name=f"llama-{i}", max_new_tokens=2) for i, p in enumerate(paths))
        for backend in (a, b):
            residency.register(backend, size_bytes=nbytes // 2)  # an estimate, corrected after load
        async with residency.use("llama-0") as model:
            assert model is a and a.loaded
            reply = await a.complete(
                [{"role": "user", "content": "hi"}], settings=GenerationSettings(max_tokens=2)
            )
            assert reply.usage.completion_tokens >= 1
            weights = weakref.ref(a._state.model)  # type: ignore[union-attr]
        assert residency.size("llama-0") == a.nbytes == nbytes
        async with residency.use("llama-1"):
            assert b.loaded and not a.loaded
        gc.collect()
        assert weights() is None
        assert residency.metrics.evictions == 1
        assert residency.bandwidth != pytest.approx(1e9)
        await residency.clear()
        assert not b.loaded


class TestTrace:
    def test_report_and_baseline(self, tmp_path: Path) -> None:
        """On a short trace, hysteresis 0.2 hits at least as often as plain LRU, the LRU baseline
        has no quality cost, and the report has every key; the plot is a PNG."""
        report = residency_trace(n_queries=400, hysteresis_values=(0.0, 0.2), swap_weights=(0.0, 1.0))
        assert set(report) == {
            "models",
            "budget_bytes",
            "n_queries",
            "n_contexts",
            "locality",
            "bandwidth",
            "seed",
            "rows",
        }
        assert report["models"] == dict(DEFAULT_ZOO)
        rows = {(r["selector"], r["hysteresis"], r["swap_weight"]): r for r in report["rows"]}
        assert set(rows) == {
            ("permission", 0.0, 0.0),
            ("permission", 0.2, 0.0),
            ("permission", 0.0, 1.0),
            ("permission", 0.2, 1.0),
            ("lru", None, None),
        }
        lru = rows["lru", None, None]
        for weight in (0.0, 1.0):
            assert rows["permission", 0.2, weight]["hit_rate"] >= lru["hit_rate"]
        assert lru["quality_cost"] == 0.0 and lru["mean_regret"] == 0.0
        for row in rows.values():
            assert 0.0 <= row["quality_cost"] <= 1.0
            assert row["mean_regret"] >= 0.0
            assert row["bytes_loaded"] > 0
        # no hysteresis and no swap cost is plain "most trusted" selection: identical to the baseline
        assert rows["permission", 0.0, 0.0]["swaps"] == lru["swaps"]
        png = plot_residency(report, tmp_path / "out" / "residency.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_trust_shape_is_checked(self) -> None:
        """A trust matrix whose columns do not match the models is refused."""
        with pytest.raises(ConfigError, match="shape"):
            residency_trace({"a": 1, "b": 1}, np.ones((3, 3)), budget_bytes=2, n_queries=10)


class TestPipeline:
    async def test_yaml_resources_manage_local_models(
        self, tiny_llamas: tuple[list[Path], int], tmp_path: Path
    ) -> None:
        """``resources.memory_budget_gb`` wraps the transformers backends: nothing loads up front,
        a model loads when its expert is called, the budget holds, and the router sees residency
        (the resident expert gets the hysteresis bonus, the other one pays its swap time)."""
        from moe_agents import load_pipeline
        from moe_agents.residency import ResidentBackend

        paths, nbytes = tiny_llamas
        path = tmp_path / "p.yaml"
        path.write_text(
            f"""
router: {{top_k: 1, gate_weight: 0.0}}
trust: {{path: ":memory:", hysteresis: 0.2}}
resources: {{memory_budget_gb: {nbytes * 1.5 / 1e9}, swap_cost_weight: 1.0}}
backends:
  a: {{kind: transformers, model: "{paths[0]}", max_new_tokens: 2}}
  b: {{kind: transformers, model: "{paths[1]}", max_new_tokens: 2}}
experts:
  - {{name: coding, kind: coding, backends: [a]}}
  - {{name: reasoning, kind: reasoning, backends: [b]}}
"""
        )
        pipeline = load_pipeline(path)
        a, b = (backend.name for backend in pipeline.backends)
        residency = pipeline.router.residency
        assert residency is not None
        assert all(isinstance(b, ResidentBackend) for b in pipeline.backends)
        async with pipeline:
            assert residency.used_bytes == 0  # nothing loads up front
            result = await pipeline.run("write a python function to sort a list")
            assert result.selection.experts == ("coding",)
            assert residency.resident([a, b]).tolist() == [True, False]
            after = await pipeline.route("write a python function to sort a list")
            assert after.scores["coding"].persistence == pytest.approx(1.2)
            assert after.scores["reasoning"].persistence == pytest.approx(1.0)
            assert after.scores["reasoning"].cheapness < 1.0  # it would have to load first
            await pipeline.run(query="solve 2x + 3 = 7 step by step", preset="rest")
            assert residency.used_bytes <= residency.config.budget_bytes
        assert residency.used_bytes == 0
