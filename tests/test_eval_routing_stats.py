"""Statistics of the routing benchmark (intervals, McNemar, ECE, the out-of-scope threshold), the
semantic-router peer on the real encoder, and the CLINC out-of-scope loader."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import pytest

from moe_agents.evaluation.data import OOS_FIT_SPLITS, clinc_out_of_scope
from moe_agents.evaluation.stats import (
    bootstrap_ci,
    calibration,
    choose_threshold,
    mcnemar,
    paired_bootstrap_ci,
    tradeoff,
)

DATA = Path(os.environ.get("MOE_AGENTS_EVAL_DATA") or Path(__file__).parents[2] / "shared" / "data")


class TestBootstrap:
    def test_interval_contains_the_point_estimate(self) -> None:
        """The 95 % interval of an accuracy contains the accuracy itself and lies inside [0, 1]."""
        correct = np.random.default_rng(1).random(400) < 0.7
        low, high = bootstrap_ci(correct, resamples=2000, seed=0)
        assert 0.0 <= low < correct.mean() < high <= 1.0

    def test_interval_narrows_with_more_queries(self) -> None:
        """Ten times the queries at the same rate give an interval about √10 times narrower."""
        rng = np.random.default_rng(2)
        small, large = rng.random(200) < 0.8, rng.random(2000) < 0.8
        w_small = np.subtract(*bootstrap_ci(small, seed=0)[::-1])
        w_large = np.subtract(*bootstrap_ci(large, seed=0)[::-1])
        assert 2.0 < w_small / w_large < 4.5

    def test_same_seed_same_interval(self) -> None:
        """The interval is a function of the data and the seed."""
        correct = np.arange(300) % 3 == 0
        assert bootstrap_ci(correct, seed=7) == bootstrap_ci(correct, seed=7)
        assert bootstrap_ci(correct, seed=7) != bootstrap_ci(correct, seed=8)

    def test_width_matches_the_normal_approximation(self) -> None:
        """At p = 0.5 and n = 1000 the interval is close to ±1.96·√(p(1−p)/n) = ±3.1 points."""
        correct = np.arange(1000) % 2 == 0
        low, high = bootstrap_ci(correct, resamples=4000, seed=0)
        assert high - low == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 1000), rel=0.1)

    def test_paired_difference_interval(self) -> None:
        """The paired interval of a difference contains the observed difference; equal arrays give 0."""
        rng = np.random.default_rng(3)
        a, b = rng.random(500) < 0.8, rng.random(500) < 0.7
        low, high = paired_bootstrap_ci(a, b, seed=0)
        assert low < a.mean() - b.mean() < high
        assert paired_bootstrap_ci(a, a, seed=0) == (0.0, 0.0)

    def test_empty_is_nan(self) -> None:
        """No queries: no interval."""
        assert all(np.isnan(bootstrap_ci([])))


class TestMcNemar:
    @pytest.mark.parametrize(
        ("b", "c", "p"),
        [
            (10, 0, 2 / 1024),
            (0, 10, 2 / 1024),
            (5, 15, 2 * 21700 / 2**20),
            (7, 7, 1.0),
            (0, 0, 1.0),
            (1, 0, 1.0),
        ],
        ids=["10-0", "0-10", "5-15", "equal", "none", "one"],
    )
    def test_known_values(self, b: int, c: int, p: float) -> None:
        """Exact two-sided binomial p-values: 10 vs 0 discordant pairs → 0.00195; b = c → 1."""
        assert mcnemar(b, c) == pytest.approx(p, rel=1e-12)

    def test_large_counts_are_finite(self) -> None:
        """Hundreds of discordant pairs (as on the full test set) give a small, positive p-value."""
        p = mcnemar(300, 150)
        assert 0.0 < p < 1e-10

    def test_negative_counts_are_rejected(self) -> None:
        """Counts are counts."""
        with pytest.raises(ValueError, match="counts"):
            mcnemar(-1, 3)


class TestCalibration:
    def test_perfectly_calibrated_set_has_zero_ece(self) -> None:
        """Within every bin the share correct equals the confidence: ECE is 0."""
        conf, correct = [], []
        for c in (0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
            hits = round(c * 1000)
            conf += [c] * 1000
            correct += [True] * hits + [False] * (1000 - hits)
        cal = calibration(conf, correct, bins=15)
        assert cal.ece == pytest.approx(0.0, abs=1e-12)
        assert sum(cal.count) == 6000

    def test_sampled_calibrated_set_has_small_ece(self) -> None:
        """Correctness drawn with probability equal to the confidence: ECE near 0."""
        rng = np.random.default_rng(0)
        conf = rng.random(20000)
        cal = calibration(conf, rng.random(20000) < conf, bins=15)
        assert cal.ece < 0.02

    def test_overconfident_set(self) -> None:
        """Confidence 0.95 at 60 % accuracy: ECE is the gap, 0.35."""
        correct = np.arange(1000) % 10 < 6
        cal = calibration(np.full(1000, 0.95), correct, bins=15)
        assert cal.ece == pytest.approx(0.35)
        assert cal.count[14] == 1000 and cal.accuracy[14] == pytest.approx(0.6)
        assert np.isnan(cal.accuracy[0])
        assert cal.to_dict()["accuracy"][0] is None

    def test_mismatched_lengths_are_rejected(self) -> None:
        """One confidence per outcome."""
        with pytest.raises(ValueError, match="equal"):
            calibration([0.5, 0.6], [True])


class TestThreshold:
    def test_takes_fit_data_only(self) -> None:
        """The operating point is a function of fit confidences and the loss budget: no test input."""
        assert list(inspect.signature(choose_threshold).parameters) == ["oos_fit", "inscope_fit", "max_lost"]

    def test_highest_threshold_within_the_loss_budget(self) -> None:
        """With in-scope confidences 0.01 … 1.00, a 3 % budget lets exactly 3 fall back."""
        inscope = np.arange(1, 101) / 100
        oos = np.array([0.02, 0.2, 0.3])
        t = choose_threshold(oos, inscope, max_lost=0.03)
        assert t == pytest.approx(0.04)
        caught, lost = tradeoff(oos, inscope, np.array([t]))
        assert lost[0] == pytest.approx(0.03) and caught[0] == pytest.approx(1 / 3)
        # any higher threshold loses more than the budget
        assert tradeoff(oos, inscope, np.array([t + 1e-9]))[1][0] > 0.03

    def test_zero_budget_loses_nothing(self) -> None:
        """max_lost = 0: the threshold is the lowest in-scope confidence, so none falls back."""
        inscope = np.array([0.4, 0.6, 0.9])
        assert choose_threshold([0.1], inscope, max_lost=0.0) == 0.4

    def test_needs_both_sides(self) -> None:
        """An empty fit set is an error, not a silent default."""
        with pytest.raises(ValueError, match="fit confidences"):
            choose_threshold([], [0.5])


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared evaluation data not found at {DATA}")
class TestClincOutOfScope:
    def test_test_and_fit_splits(self) -> None:
        """oos_test has 1,000 queries; the fit splits 200; they share none."""
        test = clinc_out_of_scope(DATA)
        fit = clinc_out_of_scope(DATA, splits=OOS_FIT_SPLITS)
        assert 990 <= len(test) <= 1000 and 190 <= len(fit) <= 200
        assert not {t.casefold() for t in test} & {t.casefold() for t in fit}

    def test_test_split_cannot_be_mixed_with_fit_splits(self) -> None:
        """A caller cannot tune on oos_test by asking for it together with fit data."""
        with pytest.raises(ValueError, match="measurement only"):
            clinc_out_of_scope(DATA, splits=("oos_val", "oos_test"))
        with pytest.raises(ValueError, match="splits must be"):
            clinc_out_of_scope(DATA, splits=("test",))


class TestSemanticRouterPeer:
    def test_wrapper_gives_identical_embeddings(self, minilm) -> None:
        """semantic-router's encoder over ours returns our vectors (to 1e-6)."""
        from moe_agents.evaluation.peer import semantic_router_encoder

        texts = ["Fix this Python traceback", "What is 17 × 23?", "How are you today?"]
        wrapped = np.asarray(semantic_router_encoder(minilm)(texts))
        np.testing.assert_allclose(wrapped, minilm.encode(texts), atol=1e-6)
        assert semantic_router_encoder(minilm).name == minilm.name

    def test_routes_a_tiny_exemplar_set(self, minilm) -> None:
        """With three routes of two exemplars each, clear queries go to their route."""
        from moe_agents.evaluation.peer import SemanticRouterPeer

        peer = SemanticRouterPeer(
            minilm,
            {
                "coding": ["Write a Python function that sorts a list", "Fix this JavaScript bug"],
                "reasoning": ["Solve for x: 3x + 5 = 20", "What is 15 % of 240?"],
                "epistemic": ["Hello, how are you?", "What do you think about free will?"],
            },
        )
        routed = peer.route(
            ["Debug my Java code", "Compute 12 times 14 minus 3", "Hi there, nice to meet you"]
        )
        assert [name for name, _ in routed] == ["coding", "reasoning", "epistemic"]
        assert all(0.0 < conf <= 1.0 for _, conf in routed)
