"""``tune_policy``: the operating point chosen from replays of calibration text."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe_agents.errors import ConfigError
from moe_agents.token_router import Tuning, tune_policy
from moe_agents.token_router.tune import replay, row_checks

E, K, VOCAB = 8, 2, 64


@pytest.fixture(scope="module")
def model() -> Qwen3MoeForCausalLM:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=E,
        num_experts_per_tok=K, norm_topk_prob=True,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(config).eval()


def _docs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, VOCAB, (n,), generator=gen) for n in (20, 16)]


class TestTunePolicy:
    def test_grid_and_choice(self, model: Qwen3MoeForCausalLM) -> None:
        """Every λ × γ is replayed; the choice is the best hit rate among the rows meeting the quality
        targets (else ΔPPL ≤ 1 %), and its policy carries the grid's λ, γ and the protected top-J."""
        steps: list[str] = []
        tuning = tune_policy(
            model, _docs(), capacity=4, lambdas=(0.2, 2.0), gammas=(0.0, 1e-2), on_step=steps.append
        )
        assert isinstance(tuning, Tuning)
        assert steps == ["plain top-k", "λ=0.2 γ=0.0", "λ=0.2 γ=0.01", "λ=2.0 γ=0.0", "λ=2.0 γ=0.01"]
        assert set(tuning.rows) == {"0.2/0.0", "0.2/0.01", "2.0/0.0", "2.0/0.01"}
        assert tuning.tokens == 36 and tuning.capacity == 4 and tuning.plain_ppl > 1.0
        for row in tuning.rows.values():
            checks = row_checks(row, tuning.plain_lru)
            quality = all(c["met"] for name, c in checks.items() if name != "hit_rate_gain_points")
            assert row["quality_met"] == quality and 0.0 <= row["hit_rate"] <= 1.0
        eligible = [r for r in tuning.rows.values() if r["quality_met"]] or [
            r for r in tuning.rows.values() if r["delta_ppl_pct"] <= 1.0
        ]
        chosen = (tuning.policy.lam, tuning.policy.balance_gamma)
        if eligible:
            best = max(eligible, key=lambda r: r["hit_rate"])
            assert chosen == (best["lambda"], best["balance_gamma"])
        else:
            assert chosen == (0.1, 0.0)
        assert tuning.policy.protect_top_j == 1
        assert tuning.to_dict()["chosen"] == {"lambda": chosen[0], "balance_gamma": chosen[1]}

    def test_bonus_raises_hit_rate(self, model: Qwen3MoeForCausalLM) -> None:
        """A strong bonus hits the cache more often than plain top-k + LRU on the same text."""
        tuning = tune_policy(model, _docs(), capacity=4, lambdas=(5.0,), gammas=(0.0,))
        assert tuning.rows["5.0/0.0"]["hit_rate"] > tuning.plain_lru["hit_rate"]

    def test_prefill_and_decode_agree_on_plain_nll(self, model: Qwen3MoeForCausalLM) -> None:
        """Plain top-k gives the same NLL token by token (KV cache) as in one forward."""
        decode, n = replay(model, _docs(), "decode")
        prefill, m = replay(model, _docs(), "prefill")
        assert n == m == 34
        assert decode == pytest.approx(prefill, rel=1e-4)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"lambdas": ()}, "lambdas"),
            ({"lambdas": (0.0,)}, "lambdas"),
            ({"mode": "beam"}, "unknown replay mode"),
        ],
    )
    def test_bad_settings_raise(
        self, model: Qwen3MoeForCausalLM, kwargs: dict[str, object], match: str
    ) -> None:
        """No or non-positive λ and unknown modes are ConfigErrors."""
        with pytest.raises(ConfigError, match=match):
            tune_policy(model, _docs(), capacity=4, **kwargs)  # type: ignore[arg-type]
