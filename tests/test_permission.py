"""The permission function and ``select``: arithmetic, trust-first, fallback, exploration, presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe_agents.errors import ConfigError
from moe_agents.routing.context import ContextConfig, KMeansContexts, gate_context, kmeans
from moe_agents.routing.permission import Candidates, SelectConfig, permission, select


def test_seed_worked_example_picks_the_resident_model():
    expertise = np.array([0.8, 0.9])
    cost = np.array([0.0, 9.0])  # the second must be loaded first: 9 s
    resident = np.array([True, False])
    cheapness, persistence, perm = permission(expertise, cost, resident, hysteresis=0.2)
    np.testing.assert_allclose(cheapness, [1.0, 0.1])
    np.testing.assert_allclose(persistence, [1.2, 1.0])
    np.testing.assert_allclose(perm, [0.96, 0.09])
    s = select(Candidates(["resident", "big"], expertise, swap_s=cost, resident=resident))
    assert s.experts == ("resident",)
    assert s.scores["resident"].permission == pytest.approx(0.96)
    assert s.scores["big"].permission == pytest.approx(0.09)


def test_permission_is_the_same_arithmetic_in_torch():
    e, c, r = [0.8, 0.9, 0.3], [0.0, 9.0, 1.0], [1.0, 0.0, 1.0]
    _, _, np_perm = permission(np.array(e), np.array(c), np.array(r), 0.2)
    _, _, t_perm = permission(torch.tensor(e), torch.tensor(c), torch.tensor(r, dtype=torch.bool), 0.2)
    np.testing.assert_allclose(t_perm.numpy(), np_perm, rtol=1e-6)


def test_router_ranks_until_two_candidates_have_min_evidence():
    names = ["a", "b", "c"]
    expertise = np.array([0.9, 0.5, 0.1])
    trust = np.array([0.2, 0.4, 0.95])
    cfg = SelectConfig(min_evidence=3, low_trust_threshold=0.0)
    few = select(Candidates(names, expertise, trust=trust, evidence=np.array([5, 2, 2])), cfg)
    assert few.mode == "router_explore" and few.experts == ("a",)
    enough = select(Candidates(names, expertise, trust=trust, evidence=np.array([5, 2, 3])), cfg)
    assert enough.mode == "trust_driven" and enough.experts == ("c",)
    assert enough.scores["c"].trust == pytest.approx(0.95)


def test_without_trust_the_mode_is_router():
    s = select(Candidates(["a", "b"], np.array([0.2, 0.7])), k=2)
    assert s.mode == "router" and s.experts == ("b", "a")
    assert sum(s.weights) == pytest.approx(1.0)


def test_low_trust_candidate_is_replaced_by_the_most_similar_better_one():
    names = ["cheap", "similar", "other"]
    trust = np.array([0.1, 0.6, 0.9])
    # "cheap" is free, so it wins on permission despite low trust
    price = np.array([0.0, 20.0, 20.0])
    profiles = np.array([[0.1, 0.9, 0.1], [0.2, 0.8, 0.2], [0.9, 0.1, 0.9]])
    c = Candidates(names, np.ones(3), trust=trust, evidence=np.full(3, 10), price=price, profiles=profiles)
    s = select(c, SelectConfig(low_trust_threshold=0.3))
    assert s.mode == "fallback"
    assert s.experts == ("similar",)
    assert "replaces cheap" in (s.scores["similar"].note or "")
    kept = select(c, SelectConfig(low_trust_threshold=0.05))
    assert kept.mode == "trust_driven" and kept.experts == ("cheap",)


def test_profiles_may_be_given_lazily():
    calls = []

    def profiles() -> np.ndarray:
        calls.append(1)
        return np.eye(2)

    c = Candidates(
        ["x", "y"], np.ones(2), trust=np.array([0.9, 0.8]), evidence=np.full(2, 9), profiles=profiles
    )
    assert select(c).experts == ("x",)
    assert calls == []  # nobody below the threshold: the profiles are never read


def test_epsilon_zero_is_deterministic_and_epsilon_one_explores():
    c = Candidates(list("abcdef"), np.linspace(0.1, 0.9, 6))
    picks = {select(c, SelectConfig(epsilon=0.0), rng=np.random.default_rng(i)).experts for i in range(20)}
    assert picks == {("f",)}
    explored = [select(c, SelectConfig(epsilon=1.0), rng=np.random.default_rng(i)) for i in range(60)]
    assert {s.mode for s in explored} == {"exploration"}
    assert len({s.experts for s in explored}) == 6
    again = [select(c, SelectConfig(epsilon=1.0), rng=np.random.default_rng(i)).experts for i in range(60)]
    assert again == [s.experts for s in explored]  # seeded: reproducible


def test_presets():
    names = ["gpt4", "mixtral", "tiny"]
    c = Candidates(
        names,
        np.array([0.9, 0.7, 0.2]),
        trust=np.array([0.85, 0.65, 0.3]),
        evidence=np.full(3, 10),
        price=np.array([10.0, 1.0, 0.0]),
    )
    cfg = SelectConfig(cost_weight=0.0, low_trust_threshold=0.0)
    assert select(c, cfg, k=2).experts == ("gpt4", "mixtral")
    assert select(c, cfg, k=2, preset="focus").experts == ("gpt4",)
    # cheapest *capable*: tiny's trust is below half of the best, so mixtral
    assert select(c, cfg, k=2, preset="rest").experts == ("mixtral",)
    assert select(c, cfg, preset="crisis").experts == ("mixtral",)
    with pytest.raises(ValueError):
        select(c, cfg, preset="sleepy")


def test_allowed_restricts_the_choice_and_notes_why():
    c = Candidates(["gpt4", "local"], np.array([0.9, 0.4]), allowed=np.array([False, True]))
    s = select(c)
    assert s.experts == ("local",)
    assert "budget" in (s.scores["gpt4"].note or "")


def test_min_confidence_and_fallback():
    c = Candidates(["a", "b"], np.array([0.1, 0.05]))
    assert select(c, min_confidence=0.5).mode == "low_confidence"
    s = select(c, min_confidence=0.5, fallback="b")
    assert s.experts == ("b",) and s.mode == "fallback"


def test_cost_weight_trades_quality_for_price():
    c = Candidates(["gpt4", "mixtral"], np.array([0.8, 0.7]), price=np.array([1.0, 0.05]))
    assert select(c, SelectConfig(cost_weight=0.0)).experts == ("gpt4",)
    assert select(c, SelectConfig(cost_weight=1.0)).experts == ("mixtral",)


def test_select_config_validates():
    with pytest.raises(ConfigError, match="epsilon"):
        SelectConfig(epsilon=2.0)
    with pytest.raises(ConfigError, match="min_evidence"):
        SelectConfig(min_evidence=0)


def test_kmeans_contexts_are_seeded_and_separate_clusters():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8)) * 0.05 + np.eye(8)[0]
    b = rng.normal(size=(40, 8)) * 0.05 + np.eye(8)[1]
    x = np.vstack([a, b])
    c1, counts = kmeans(x, 2, seed=3)
    c2, _ = kmeans(x, 2, seed=3)
    np.testing.assert_array_equal(c1, c2)
    assert sorted(counts.tolist()) == [40.0, 40.0]
    ctx = KMeansContexts.fit(x, ContextConfig(kind="cluster", clusters=2))
    labels = ctx.assign_many(x)
    assert len(set(labels[:40])) == 1 and len(set(labels[40:])) == 1 and labels[0] != labels[-1]


def test_online_contexts_move_towards_queries():
    ctx = KMeansContexts(np.array([[1.0, 0.0], [0.0, 1.0]]), online=True)
    before = ctx.centroids[0].copy()
    assert ctx.assign(np.array([1.0, 0.4])) == "c0"
    assert not np.allclose(ctx.centroids[0], before)
    assert np.linalg.norm(ctx.centroids[0]) == pytest.approx(1.0, abs=1e-5)


def test_gate_context_and_config_checks():
    assert gate_context(["coding", "reasoning"], np.array([0.2, 0.8])) == "gate:reasoning"
    with pytest.raises(ConfigError, match=r"trust\.context"):
        ContextConfig(kind="galaxy")  # type: ignore[arg-type]


def test_success_model_learns_who_is_right():
    from moe_agents.routing.quality import SuccessModel

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    # expert a is right when the first feature is positive, expert b when it is negative
    outcomes = np.stack([x[:, 0] > 0, x[:, 0] < 0], axis=1).astype(float)
    model = SuccessModel.fit(x, outcomes, ["a", "b"], l2=1e-3)
    p = model.predict_proba(np.array([[2.0] + [0.0] * 7, [-2.0] + [0.0] * 7]))
    assert p[0, 0] > 0.8 and p[0, 1] < 0.2 and p[1, 1] > 0.8
    with pytest.raises(ValueError, match="outcomes"):
        SuccessModel.fit(x, outcomes[:, :1], ["a", "b"])
