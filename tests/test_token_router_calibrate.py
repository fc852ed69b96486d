"""Trust from a quality signal: shapes, standardisation, effect on routing, and a slow reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from moe_agents.errors import ConfigError
from moe_agents.token_router import TokenPolicy, patch
from moe_agents.token_router.calibrate import calibrate_trust, trust_from_routing

E, K, VOCAB = 8, 2, 128


def _model(seed: int = 0) -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
        intermediate_size=64, moe_intermediate_size=16, num_experts=E, num_experts_per_tok=K, head_dim=8,
        initializer_range=0.5,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(cfg).eval()


def _batches(seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 16), generator=gen), torch.randint(0, VOCAB, (1, 9), generator=gen)]


def _indices(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    got: list[torch.Tensor] = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda _m, _i, out: got.append(out[2].sort(-1).values))
        for layer in model.model.layers
    ]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return got


class TestCalibrateTrust:
    def test_shapes_finite_standardised(self) -> None:
        """One finite (E,) tensor per layer, mean 0 and std 1 over the experts that were routed to."""
        model = _model()
        with patch(model, TokenPolicy(trust_max=1.0)) as handle:
            trust = calibrate_trust(model, handle, _batches())
            assert [t.shape for t in trust] == [torch.Size([E])] * 2
            for layer, t in enumerate(trust):
                assert torch.isfinite(t).all()
                seen = t != 0
                assert seen.sum() >= 2
                assert abs(float(t[seen].mean())) < 1e-5
                torch.testing.assert_close(handle.states[layer].trust, t)

    def test_layers_subset(self) -> None:
        """Only the requested layers are calibrated and set."""
        model = _model()
        with patch(model, TokenPolicy(trust_max=1.0)) as handle:
            trust = calibrate_trust(model, handle, _batches(), layers=[1])
            assert len(trust) == 1 and handle.states[0].trust is None and handle.states[1].trust is not None
            with pytest.raises(ConfigError, match="out of range"):
                calibrate_trust(model, handle, _batches(), layers=[2])

    @pytest.mark.parametrize("trust_max", [0.0, 5.0])
    def test_trust_changes_routing_only_when_bounded_above_zero(self, trust_max: float) -> None:
        """With trust_max > 0 the calibrated trust moves some routing; with trust_max = 0 nothing moves."""
        model = _model()
        ids = torch.randint(0, VOCAB, (1, 48), generator=torch.Generator().manual_seed(9))
        plain = _indices(model, ids)
        with patch(model, TokenPolicy(trust_max=trust_max)) as handle:
            calibrate_trust(model, handle, _batches())
            routed = _indices(model, ids)
        changed = any(not torch.equal(a, b) for a, b in zip(plain, routed, strict=True))
        assert changed == (trust_max > 0)

    def test_matches_slow_reference(self) -> None:
        """The vectorised computation equals a per-token, per-expert loop."""
        model = _model()
        batch = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(5))
        with patch(model, TokenPolicy()) as handle:
            fast = calibrate_trust(model, handle, [batch])
            routing: list[tuple[torch.Tensor, torch.Tensor]] = []
            hooks = [
                model.get_submodule(n).register_forward_hook(lambda _m, _i, o: routing.append((o[1], o[2])))
                for n in handle.names
            ]
            with torch.no_grad():
                logits = model(input_ids=batch).logits[0]
            for h in hooks:
                h.remove()
        losses = [
            float(nn.functional.cross_entropy(logits[t : t + 1], batch[0, t + 1 : t + 2]))
            for t in range(batch.shape[1] - 1)
        ]
        mean = sum(losses) / len(losses)
        std = (sum((x - mean) ** 2 for x in losses) / len(losses)) ** 0.5
        z = [(x - mean) / std for x in losses]
        for layer, (weights, indices) in enumerate(routing):
            num, den = [0.0] * E, [0.0] * E
            for t in range(len(z)):
                for j in range(K):
                    e = int(indices[t, j])
                    num[e] += float(weights[t, j]) * -z[t]
                    den[e] += float(weights[t, j])
            seen = [e for e in range(E) if den[e] > 0]
            per = [num[e] / den[e] for e in seen]
            m = sum(per) / len(per)
            s = (sum((x - m) ** 2 for x in per) / len(per)) ** 0.5
            expected = torch.zeros(E)
            for e, x in zip(seen, per, strict=True):
                expected[e] = (x - m) / s
            torch.testing.assert_close(fast[layer], expected, atol=1e-4, rtol=1e-4)

    def test_unseen_experts_zero_and_degenerate(self) -> None:
        """Experts never routed to get 0; a single seen expert gives all zeros."""
        losses = torch.tensor([1.0, -1.0, 0.5])
        weights = torch.full((3, 1), 1.0)
        t = trust_from_routing(losses, weights, torch.tensor([[0], [1], [1]]), 4)
        assert t[2] == 0 and t[3] == 0 and t[1] > t[0]
        assert torch.equal(trust_from_routing(losses, weights, torch.zeros(3, 1, dtype=torch.long), 4),
                           torch.zeros(4))  # fmt: skip

    def test_empty_calibration_raises(self) -> None:
        """Batches without a token that has a next token raise ConfigError."""
        model = _model()
        with (
            patch(model, TokenPolicy(trust_max=1.0)) as handle,
            pytest.raises(ConfigError, match="two tokens"),
        ):
            calibrate_trust(model, handle, [torch.tensor([[3]])])
