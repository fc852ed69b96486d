"""The first router: centroid gate × self-assessment, load penalty, modality, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moe_agents import ConfigError, ExpertPolicy, GateConfig, LLMExpert, Query, Router, RouterConfig, Rule
from moe_agents.experts import CodingExpert, EpistemicExpert, KnowledgeExpert, OmniExpert, ReasoningExpert
from moe_agents.routing.encoder import SentenceEncoder
from moe_agents.routing.gates import fit_gate
from moe_agents.testing import HashingEncoder


class Fixed(LLMExpert):
    """An expert with a fixed self-assessment."""

    def __init__(self, name: str, confidence: float, exemplars: tuple[str, ...]) -> None:
        super().__init__(name, exemplars=exemplars)
        self.confidence = confidence

    async def can_handle(self, query: Query) -> float:
        return self.confidence


def experts() -> list[LLMExpert]:
    return [
        Fixed("a", 0.9, ("apples and oranges", "fruit salad")),
        Fixed("b", 0.1, ("cars and trucks", "engine repair")),
        Fixed("c", 0.5, ("stars and planets", "telescope")),
    ]


class TestConfig:
    @pytest.mark.parametrize(
        "kwargs",
        [{"top_k": 0}, {"gate_weight": 1.5}, {"min_confidence": -0.1}, {"top_k": 3, "assess_top": 2}],
        ids=["top_k", "gate_weight", "min_confidence", "assess_top"],
    )
    def test_invalid_settings_are_config_errors(self, kwargs: dict[str, float]) -> None:
        """Out-of-range router settings are rejected when configured."""
        with pytest.raises(ConfigError):
            RouterConfig(**kwargs)  # type: ignore[arg-type]


class TestRoute:
    async def test_expertise_mixes_gate_and_self_assessment(self) -> None:
        """expertise = gate_weight × gate + (1 − gate_weight) × can_handle, per candidate."""
        router = Router(RouterConfig(top_k=3, gate_weight=0.6), encoder=HashingEncoder())
        selection = await router.route(Query("fruit salad with apples"), experts())
        gates = [selection.scores[n].gate for n in "abc"]
        assert sum(gates) == pytest.approx(1.0)  # type: ignore[arg-type]
        for name in "abc":
            s = selection.scores[name]
            assert s.expertise == pytest.approx(0.6 * s.gate + 0.4 * s.self_assessment)  # type: ignore[operator]
            assert s.permission == pytest.approx(s.expertise)
        assert selection.experts[0] == "a"

    async def test_weights_are_normalised_best_first(self) -> None:
        """Chosen weights sum to 1 and follow the permission order."""
        router = Router(RouterConfig(top_k=2), encoder=HashingEncoder())
        selection = await router.route(Query("telescope for stars"), experts())
        assert len(selection.experts) == 2
        assert sum(selection.weights) == pytest.approx(1.0)
        assert list(selection.weights) == sorted(selection.weights, reverse=True)
        perms = [selection.scores[e].permission for e in selection.experts]
        assert selection.weights[0] / selection.weights[1] == pytest.approx(perms[0] / perms[1])

    async def test_gate_weight_zero_uses_self_assessment_only(self) -> None:
        """With gate_weight 0 the highest self-assessment wins whatever the text says."""
        router = Router(RouterConfig(gate_weight=0.0), encoder=HashingEncoder())
        selection = await router.route(Query("engine repair for trucks"), experts())
        assert selection.experts == ("a",)

    async def test_overloaded_expert_is_penalised(self) -> None:
        """An expert at max_load has its permission halved."""
        pool = experts()
        router = Router(RouterConfig(top_k=3), encoder=HashingEncoder())
        before = (await router.route(Query("apples"), pool)).scores["a"].permission
        pool[0].policy = ExpertPolicy(max_load=1)
        pool[0].stats.current_load = 1
        after = await router.route(Query("apples"), pool)
        assert after.scores["a"].permission == pytest.approx(before * 0.5)
        assert after.scores["a"].note == "at max_load"
        assert after.scores["a"].load == 1.0

    async def test_min_confidence_keeps_only_confident_experts(self) -> None:
        """Experts below min_confidence are dropped from the top-k."""
        router = Router(RouterConfig(top_k=3, min_confidence=0.45), encoder=HashingEncoder())
        selection = await router.route(Query("apples and oranges fruit salad"), experts())
        assert selection.mode == "router"
        assert all(selection.scores[e].permission >= 0.45 for e in selection.experts)
        assert "b" not in selection.experts

    async def test_nothing_confident_still_picks_the_best(self) -> None:
        """When no expert reaches min_confidence, the best one is chosen in low_confidence mode."""
        router = Router(RouterConfig(min_confidence=0.99), encoder=HashingEncoder())
        selection = await router.route(Query("apples"), experts())
        assert selection.mode == "low_confidence"
        assert len(selection.experts) == 1

    async def test_rule_restricts_candidates(self) -> None:
        """A matching rule limits the choice to its experts and names itself in the mode."""
        router = Router(
            RouterConfig(top_k=2), encoder=HashingEncoder(), rules=[Rule(r"\bstars?\b", ("c",), "astro")]
        )
        selection = await router.route(Query("apples under the stars"), experts())
        assert selection.experts == ("c",)
        assert selection.mode == "rule:astro"
        assert "astro" in (selection.scores["a"].note or "")

    async def test_rules_do_not_apply_to_other_queries(self) -> None:
        """A query no rule matches goes through the gate as usual."""
        router = Router(encoder=HashingEncoder(), rules=[Rule(r"\bstars?\b", ("c",))])
        selection = await router.route(Query("apples and oranges"), experts())
        assert selection.mode == "router"
        assert selection.experts == ("a",)

    def test_invalid_rule_pattern(self) -> None:
        """A rule whose pattern does not compile is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="valid regular expression"):
            Rule("([unclosed", ("a",))

    async def test_fallback_expert_when_nobody_is_confident(self) -> None:
        """Below min_confidence the configured fallback expert answers, in mode fallback."""
        router = Router(RouterConfig(min_confidence=0.99, fallback_expert="b"), encoder=HashingEncoder())
        selection = await router.route(Query("apples"), experts())
        assert selection.experts == ("b",)
        assert selection.mode == "fallback"

    async def test_gate_is_fitted_once_and_cached_on_disk(self, tmp_path: Path) -> None:
        """The first route fits the gate and saves it; a new router with the same exemplars loads it."""
        cfg = RouterConfig(gate_cache_dir=str(tmp_path))
        first = Router(cfg, encoder=HashingEncoder())
        await first.route(Query("apples"), experts())
        assert first.report is not None and first.report.train_size > 0
        saved = list(tmp_path.glob("mlp-*.safetensors"))
        assert len(saved) == 1
        second = Router(cfg, encoder=HashingEncoder())
        await second.prepare(experts())
        assert second.gate is not None
        probe = HashingEncoder().encode(["fruit salad"])
        np.testing.assert_allclose(second.gate.predict_proba(probe), first.gate.predict_proba(probe))  # type: ignore[union-attr]

    async def test_changed_exemplars_refit_the_gate(self, tmp_path: Path) -> None:
        """Editing an expert's exemplars makes the router fit a new gate."""
        cfg = RouterConfig(gate_cache_dir=str(tmp_path))
        pool = experts()
        router = Router(cfg, encoder=HashingEncoder())
        await router.prepare(pool)
        pool[0].exemplars = (*pool[0].exemplars, "banana bread")
        await router.prepare(pool)
        assert len(list(tmp_path.glob("mlp-*.safetensors"))) == 2

    async def test_changed_extra_exemplars_refit_the_gate(self, tmp_path: Path) -> None:
        """Exemplars added to the router after a fit also make it fit a new gate."""
        cfg = RouterConfig(gate_cache_dir=str(tmp_path))
        router = Router(cfg, encoder=HashingEncoder())
        await router.prepare(experts())
        router.extra_exemplars = {"c": ("comets and meteors",)}
        await router.prepare(experts())
        assert len(list(tmp_path.glob("mlp-*.safetensors"))) == 2

    async def test_given_gate_must_match_the_experts(self) -> None:
        """A gate fitted for other experts is rejected with the names that differ."""
        gate, _ = fit_gate(
            HashingEncoder().encode(["x", "y"]), ["p", "q"], ["p", "q"], GateConfig(kind="centroid")
        )
        router = Router(encoder=HashingEncoder(), gate=gate)
        with pytest.raises(ConfigError, match=r"missing \['a', 'b', 'c'\], extra \['p', 'q'\]"):
            await router.prepare(experts())

    async def test_extra_exemplars_join_the_experts_own(self) -> None:
        """Exemplars given to the router are added to each expert's own."""
        router = Router(encoder=HashingEncoder(), exemplars={"b": ["diesel engines"]})
        assert router.exemplars(experts())["b"] == ("cars and trucks", "engine repair", "diesel engines")
        with pytest.raises(ConfigError, match="unknown experts"):
            Router(encoder=HashingEncoder(), exemplars={"zzz": ["x"]}).exemplars(experts())

    async def test_embeddings_are_cached(self) -> None:
        """A repeated query is embedded once."""
        calls: list[list[str]] = []

        class Counting(HashingEncoder):
            def encode(self, texts):  # type: ignore[no-untyped-def]
                calls.append(list(texts))
                return super().encode(texts)

        router = Router(encoder=Counting())
        await router.route(Query("apples"), experts())
        await router.route(Query("apples"), experts())
        assert [c for c in calls if c == ["apples"]] == [["apples"]]

    async def test_experts_without_exemplars_get_a_uniform_gate(self) -> None:
        """With no exemplars at all, the gate is uniform and self-assessment decides."""
        pool = [Fixed("x", 0.2, ()), Fixed("y", 0.8, ())]
        selection = await Router(encoder=HashingEncoder()).route(Query("anything"), pool)
        assert selection.scores["x"].gate == pytest.approx(0.5)
        assert selection.experts == ("y",)


ROUTED = [
    ("coding", "My Python script throws a KeyError when I read the config dict, how do I fix it?"),
    ("coding", "Write a SQL query that returns the top 5 customers by total order value"),
    ("reasoning", "A shop sells pens at 3 for $2. How much do 18 pens cost?"),
    ("reasoning", "Solve for x: 3x - 7 = 11"),
    ("knowledge", "Who wrote the novel Pride and Prejudice?"),
    ("knowledge", "What is the capital city of Australia?"),
    ("epistemic", "Do you think it is ever right to lie to protect someone?"),
    ("epistemic", "hey, how's your day going?"),
]


@pytest.fixture(scope="module")
def default_experts() -> list[LLMExpert]:
    return [CodingExpert(), ReasoningExpert(), KnowledgeExpert(), EpistemicExpert(), OmniExpert()]


class TestWithRealEncoder:
    @pytest.mark.parametrize(
        ("expected", "text"), ROUTED, ids=[f"{e}-{i}" for i, (e, _) in enumerate(ROUTED)]
    )
    async def test_obvious_requests_reach_their_expert(
        self, minilm: SentenceEncoder, default_experts: list[LLMExpert], expected: str, text: str
    ) -> None:
        """With the bundled encoder and default exemplars, obvious requests go to the right expert."""
        selection = await Router(encoder=minilm).route(Query(text), default_experts)
        assert selection.experts[0] == expected, {
            n: round(s.permission, 3) for n, s in selection.scores.items()
        }

    def test_embeddings_are_unit_length(self, minilm: SentenceEncoder) -> None:
        """The bundled encoder returns L2-normalised float32 vectors of dimension 384."""
        v = minilm.encode(["one", "two three"])
        assert v.shape == (2, 384) and v.dtype == np.float32
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
