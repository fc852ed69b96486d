"""The token router: policy, selection, expert cache, metrics and patching real tiny MoE models."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from moe_agents.errors import ConfigError
from moe_agents.routing.permission import permission
from moe_agents.token_router import (
    ExpertCache,
    TokenPolicy,
    belady_hit_rate,
    dead_experts,
    hit_rate,
    load_entropy,
    max_vio,
    patch,
    select_experts,
    supported_routers,
)
from moe_agents.token_router.router import TokenRouterMixin

E, K, VOCAB = 8, 2, 128
_SMALL = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB
)


def _qwen3_moe() -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        **_SMALL, intermediate_size=64, moe_intermediate_size=16, num_experts=E, num_experts_per_tok=K,
        head_dim=8, initializer_range=0.5,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(cfg)


def _qwen3_moe_normalised() -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    cfg = Qwen3MoeConfig(
        **_SMALL, intermediate_size=64, moe_intermediate_size=16, num_experts=E, num_experts_per_tok=K,
        head_dim=8, initializer_range=0.5, norm_topk_prob=True,
    )  # fmt: skip
    return Qwen3MoeForCausalLM(cfg)


def _qwen2_moe() -> nn.Module:
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    cfg = Qwen2MoeConfig(
        **_SMALL, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        num_experts=E, num_experts_per_tok=K, initializer_range=0.5,
    )  # fmt: skip
    return Qwen2MoeForCausalLM(cfg)


def _olmoe() -> nn.Module:
    from transformers import OlmoeConfig, OlmoeForCausalLM

    cfg = OlmoeConfig(
        **_SMALL, intermediate_size=16, num_experts=E, num_experts_per_tok=K, initializer_range=0.5
    )
    return OlmoeForCausalLM(cfg)


def _mixtral() -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(
        **_SMALL, intermediate_size=16, num_local_experts=E, num_experts_per_tok=K, initializer_range=0.5
    )
    return MixtralForCausalLM(cfg)


def _qwen3_omni_thinker() -> nn.Module:
    from transformers import Qwen3OmniMoeThinkerConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        Qwen3OmniMoeThinkerForConditionalGeneration,
    )

    text = dict(
        **_SMALL, intermediate_size=64, moe_intermediate_size=16, num_experts=E, num_experts_per_tok=K,
        head_dim=8, initializer_range=0.5,
    )  # fmt: skip
    cfg = Qwen3OmniMoeThinkerConfig(
        text_config=text,
        audio_config=dict(
            d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, output_dim=32
        ),
        vision_config=dict(
            depth=1,
            hidden_size=32,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            deepstack_visual_indexes=[0],
        ),
    )
    return Qwen3OmniMoeThinkerForConditionalGeneration(cfg)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "qwen3-moe": _qwen3_moe,
    "qwen3-moe-norm": _qwen3_moe_normalised,
    "qwen2-moe": _qwen2_moe,
    "olmoe": _olmoe,
    "mixtral": _mixtral,
    "qwen3-omni-thinker": _qwen3_omni_thinker,
}
_MODELS: dict[str, nn.Module] = {}


def _model(arch: str) -> nn.Module:
    """A seeded tiny model of ``arch``, built once per session (every test unpatches it)."""
    if arch not in _MODELS:
        torch.manual_seed(0)
        _MODELS[arch] = BUILDERS[arch]().eval()
    return _MODELS[arch]


def _ids(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _gates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n.endswith("mlp.gate")]


ARCHS = list(BUILDERS)


class TestPolicy:
    def test_default_is_neutral(self) -> None:
        """The default policy is all zero and neutral."""
        assert TokenPolicy().neutral
        assert not TokenPolicy(lam=0.1).neutral
        assert not TokenPolicy(balance_gamma=1e-3).neutral

    @pytest.mark.parametrize(
        "bad",
        [{"lam": -1.0}, {"protect_top_j": -1}, {"trust_max": -0.1}, {"delta_momentum": 1.5}],
        ids=["lam", "protect", "trust", "momentum"],
    )
    def test_invalid_settings_raise(self, bad: dict[str, float]) -> None:
        """Out-of-range settings raise ConfigError naming the field."""
        with pytest.raises(ConfigError, match=next(iter(bad))):
            TokenPolicy(**bad)  # type: ignore[arg-type]


class TestSelection:
    def _logits(self, t: int = 64) -> torch.Tensor:
        return torch.randn(t, E, generator=torch.Generator().manual_seed(3)) * 2

    def test_neutral_matches_plain_top_k(self) -> None:
        """Without bonus or bias the choice and weights are the model's own top-k."""
        logits = self._logits()
        probs = torch.softmax(logits, -1)
        top, idx = torch.topk(probs, K, -1)
        r = select_experts(logits, K, normalize=True)
        assert torch.equal(r.indices, idx)
        assert torch.equal(r.weights, top / top.sum(-1, keepdim=True))
        assert torch.equal(select_experts(logits, K, normalize=False).weights, top)

    def test_bonus_never_displaces_protected_top_j(self) -> None:
        """A huge resident bonus fills the free slots with resident experts but keeps the model's top-J."""
        logits = self._logits()
        resident = torch.zeros(E, dtype=torch.bool)
        resident[[5, 6, 7]] = True
        own = torch.topk(logits, K, -1).indices
        r = select_experts(logits, K, resident=resident, lam=50.0, delta=1.0, protect_top_j=1)
        assert torch.equal(r.indices[:, 0], own[:, 0])
        free = r.indices[:, 1]
        assert bool(resident[free[free != own[:, 0]]].all())
        assert bool((r.indices[:, 0] != r.indices[:, 1]).all())

    def test_bonus_is_the_permission_hysteresis(self) -> None:
        """A resident expert wins a slot exactly when p · exp(λΔ) beats the best non-resident p."""
        logits = torch.log(torch.tensor([[0.40, 0.30, 0.20, 0.10]]))
        resident = torch.tensor([False, False, True, False])
        lose = select_experts(logits, 2, resident=resident, lam=0.1, delta=math.log(1.4) / 0.1 * 0.99)
        win = select_experts(logits, 2, resident=resident, lam=0.1, delta=math.log(1.6) / 0.1)
        assert sorted(lose.indices[0].tolist()) == [0, 1]
        assert sorted(win.indices[0].tolist()) == [0, 2]

    def test_log_bonus_is_log_permission_persistence(self) -> None:
        """The resident bonus λΔ is the log of permission()'s persistence factor with h = exp(λΔ) − 1,
        and selecting with it equals ranking the model's probabilities times that factor."""
        resident = torch.tensor([True, False, True, False, False, True])
        lam, delta = 0.3, 2.5
        _, persistence, scored = permission(
            torch.softmax(self._logits(1)[:, :6], -1), 0.0, resident.float(), math.expm1(lam * delta)
        )
        torch.testing.assert_close(torch.log(persistence), resident.float() * lam * delta)
        r = select_experts(self._logits(1)[:, :6], 3, resident=resident, lam=lam, delta=delta)
        assert sorted(r.indices[0].tolist()) == sorted(torch.topk(scored, 3, -1).indices[0].tolist())

    def test_weights_come_from_original_probabilities(self) -> None:
        """Weights are the model's probabilities over the final set, renormalised to sum 1."""
        logits = self._logits()
        resident = torch.zeros(E, dtype=torch.bool)
        resident[:3] = True
        r = select_experts(logits, K, resident=resident, lam=2.0, delta=3.0, protect_top_j=1)
        probs = torch.softmax(logits, -1).gather(-1, r.indices)
        torch.testing.assert_close(r.weights, probs / probs.sum(-1, keepdim=True))
        torch.testing.assert_close(r.weights.sum(-1), torch.ones(len(logits)))

    def test_bias_steers_free_slots(self) -> None:
        """A large selection bias for one expert puts it in every token's free slot."""
        bias = torch.zeros(E)
        bias[4] = 100.0
        r = select_experts(self._logits(), K, bias=bias, protect_top_j=1)
        assert bool((r.indices == 4).any(-1).all())


class TestCache:
    def test_lru_counts_by_hand(self) -> None:
        """LRU with C=2 on a hand trace: hits, misses, evictions and re-picks as worked out."""
        cache = ExpertCache(1, 4, 2, "lru")
        # token rows (k=1): 0 1 0 2 1 0
        hits, misses = cache.access(0, torch.tensor([[0], [1], [0], [2], [1], [0]]))
        # 0 m, 1 m, 0 h, 2 m (evicts 1), 1 m (evicts 0; re-pick of the expert evicted one token ago),
        # 0 m (evicts 2; re-pick)
        assert (hits, misses) == (1, 5)
        s = cache.stats()
        assert (s.evictions, s.repicks, s.token_layers) == (3, 2, 6)
        assert cache.resident_mask(0).tolist() == [True, True, False, False]

    def test_hysteresis_keeps_proved_experts(self) -> None:
        """lru+hysteresis evicts an expert never hit since loading before a proved, older one."""
        trace = torch.tensor([[0], [0], [1], [2], [0]])
        lru, hyst = ExpertCache(1, 4, 2, "lru"), ExpertCache(1, 4, 2, "lru+hysteresis")
        assert lru.access(0, trace) == (1, 4)  # 2 evicts 0 (LRU), so the last 0 misses
        assert hyst.access(0, trace) == (2, 3)  # 2 evicts 1 (never hit), so the last 0 hits

    def test_belady_by_hand_and_beats_lru(self) -> None:
        """Belady evicts the expert used farthest ahead; on a fixed random trace it hits at least as LRU."""
        assert belady_hit_rate([torch.tensor([[0], [1], [2], [0], [1]])], 2) == pytest.approx(1 / 5)
        gen = torch.Generator().manual_seed(7)
        trace = [torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(200)]) for _ in range(3)]
        lru = ExpertCache(3, E, 4, "lru")
        for layer, t in enumerate(trace):
            lru.access(layer, t)
        assert belady_hit_rate(trace, 4, E) >= lru.stats().hit_rate
        assert belady_hit_rate(trace, 4, E) > lru.stats().hit_rate + 0.05

    def test_belady_refuses_a_different_trace(self) -> None:
        """A belady cache accessed off its future raises, and needs the future to be built."""
        cache = ExpertCache(1, 4, 2, "belady", future=[torch.tensor([[0], [1]])])
        with pytest.raises(ValueError, match="future"):
            cache.access(0, torch.tensor([[2]]))
        with pytest.raises(ConfigError, match="future"):
            ExpertCache(1, 4, 2, "belady")

    @pytest.mark.parametrize(
        "kwargs",
        [{"capacity": 0}, {"capacity": 9}, {"policy": "fifo"}, {"num_layers": 0}],
        ids=["zero", "above-E", "policy", "layers"],
    )
    def test_bad_settings_raise(self, kwargs: dict[str, object]) -> None:
        """Impossible cache settings raise ConfigError."""
        args: dict[str, object] = {"num_layers": 1, "num_experts": E, "capacity": 2, "policy": "lru"} | kwargs
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            ExpertCache(**args)  # type: ignore[arg-type]

    @settings(max_examples=40, deadline=None)
    @given(
        capacity=st.integers(1, 6),
        policy=st.sampled_from(["lru", "lru+hysteresis", "belady"]),
        rows=st.lists(
            st.lists(st.integers(0, 5), min_size=2, max_size=2, unique=True), min_size=1, max_size=40
        ),
    )
    def test_never_exceeds_capacity(self, capacity: int, policy: str, rows: list[list[int]]) -> None:
        """On any access stream every policy keeps at most C experts and counts every access once."""
        trace = torch.tensor(rows)
        future = [trace] if policy == "belady" else None
        cache = ExpertCache(1, 6, capacity, policy, future=future)
        total = 0
        for i in range(0, len(rows), 3):
            hits, misses = cache.access(0, trace[i : i + 3])
            total += hits + misses
            assert int(cache.resident_mask(0).sum()) <= capacity
        assert total == trace.numel()
        assert cache.hits + cache.misses == trace.numel()
        assert bool(cache.resident_mask(0)[trace[-1]].all()) or capacity < 2


class TestMetrics:
    def test_hand_computed(self) -> None:
        """Hit rate, entropy, MaxVio and dead experts on small loads worked out by hand."""
        assert hit_rate(3, 1) == 0.75 and hit_rate(0, 0) == 0.0
        even, skewed = torch.tensor([2, 2, 2, 2]), torch.tensor([4, 0, 0, 0])
        assert load_entropy(even) == pytest.approx(1.0)
        assert load_entropy(skewed) == pytest.approx(0.0)
        assert load_entropy(torch.tensor([1, 1, 0, 0])) == pytest.approx(0.5)
        assert max_vio(even) == pytest.approx(0.0)
        assert max_vio(skewed) == pytest.approx(3.0)
        assert dead_experts(skewed) == 3
        assert dead_experts(torch.stack([even, skewed])) == [0, 3]
        assert max_vio(torch.stack([even, skewed])) == pytest.approx([0.0, 3.0])

    def test_cache_stats(self) -> None:
        """Cache stats: churn is evictions per token-layer; load is counted per layer."""
        cache = ExpertCache(2, 4, 2)
        cache.access(0, torch.tensor([[0, 1], [2, 3]]))
        cache.access(1, torch.tensor([[0, 1], [0, 1]]))
        s = cache.stats()
        assert s.churn == pytest.approx(2 / 4)
        assert s.hit_rate == pytest.approx(2 / 8)
        assert s.load.tolist() == [[1, 1, 1, 1], [2, 2, 0, 0]]
        assert s.dead_experts == 2
        assert s.load_entropy == pytest.approx((1.0 + 0.5) / 2)


class TestPatch:
    def test_all_architectures_supported(self) -> None:
        """Every router named in the issue is found in the installed transformers with its contract."""
        names = {cls.__name__ for cls in supported_routers()}
        assert names == {
            "Qwen3MoeTopKRouter",
            "Qwen2MoeTopKRouter",
            "OlmoeTopKRouter",
            "MixtralTopKRouter",
            "Qwen3OmniMoeThinkerTextTopKRouter",
        }

    @pytest.mark.parametrize("arch", ARCHS)
    def test_round_trip(self, arch: str) -> None:
        """Patching swaps in subclasses of the model's own router; unpatching puts the same objects back."""
        model = _model(arch)
        before = _gates(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        handle = patch(model)
        patched = _gates(model)
        assert len(patched) == len(before) == handle.num_layers == 2
        for (_, orig), (_, new) in zip(before, patched, strict=True):
            assert new is not orig
            assert isinstance(new, type(orig)) and isinstance(new, TokenRouterMixin)
            assert new.weight is orig.weight
        assert model.state_dict().keys() == state.keys()
        handle.unpatch()
        assert all(a is b for (_, a), (_, b) in zip(before, _gates(model), strict=True))
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    @pytest.mark.parametrize("arch", ARCHS)
    def test_neutral_is_bit_identical(self, arch: str) -> None:
        """Neutral policy (with a counting cache), and a policy that cannot move the top-k, change no bit."""
        model, ids = _model(arch), _ids()
        with torch.no_grad():
            ref = model(input_ids=ids, output_router_logits=True)
            with patch(model, TokenPolicy(), ExpertCache(2, E, 4)) as handle:
                out = model(input_ids=ids, output_router_logits=True)
                assert handle.cache is not None and handle.cache.hits + handle.cache.misses == 2 * 12 * K
            with patch(model, TokenPolicy(lam=1.0, protect_top_j=K), ExpertCache(2, E, 4)):
                same = model(input_ids=ids)
        assert torch.equal(out.logits, ref.logits)
        assert torch.equal(same.logits, ref.logits)
        assert len(out.router_logits) == len(ref.router_logits) == 2
        assert all(torch.equal(a, b) for a, b in zip(out.router_logits, ref.router_logits, strict=True))
        if arch != "qwen3-omni-thinker":  # the thinker does not compute an aux loss
            assert out.aux_loss is not None and torch.equal(out.aux_loss, ref.aux_loss)

    @pytest.mark.parametrize("arch", ["qwen3-moe-norm", "mixtral", "qwen3-moe"])
    def test_weights_follow_the_model_and_top_j_kept(self, arch: str) -> None:
        """With a strong bonus the router keeps the model's top-1; weights are its probabilities over
        the final set, summing to 1 when the model renormalises (norm_topk_prob, Mixtral always)."""
        model, ids = _model(arch), _ids(20)
        seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        policy = TokenPolicy(lam=5.0, protect_top_j=1, balance_gamma=1e-3)
        with torch.no_grad(), patch(model, policy, ExpertCache(2, E, 3)) as handle:
            model(input_ids=_ids(20, seed=2))  # fills the cache; a batch sees the residency before it
            hooks = [g.register_forward_hook(lambda _m, _a, out: seen.append(out)) for _, g in _gates(model)]
            model(input_ids=ids)
            assert all(s.delta > 0 for s in handle.states)
        for hook in hooks:
            hook.remove()
        assert len(seen) == 2
        moved = 0
        for logits, weights, indices in seen:
            assert torch.equal(indices[:, 0], logits.argmax(-1))
            moved += int((indices[:, 1] != torch.topk(logits, K, -1).indices[:, 1]).sum())
            probs = torch.softmax(logits, -1).gather(-1, indices)
            if arch == "qwen3-moe":
                torch.testing.assert_close(weights, probs)
            else:
                torch.testing.assert_close(weights.sum(-1), torch.ones(len(weights)))
                torch.testing.assert_close(weights, probs / probs.sum(-1, keepdim=True))
        assert moved > 0  # the bonus did change some choices

    def test_cache_bonus_raises_hit_rate(self) -> None:
        """Decoding a fixed random token stream, λ>0 hits the cache at least as often as top-k + LRU."""
        model, ids = _model("qwen3-moe"), _ids(60, seed=5)

        def run(policy: TokenPolicy) -> float:
            cache = ExpertCache(2, E, 4, "lru")
            with torch.no_grad(), patch(model, policy, cache):
                for i in range(ids.shape[1]):
                    model(input_ids=ids[:, i : i + 1])
            return cache.stats().hit_rate

        plain, ours = run(TokenPolicy()), run(TokenPolicy(lam=0.5, protect_top_j=1))
        assert ours >= plain
        assert ours > plain + 0.05

    def test_unsupported_model_names_supported_ones(self) -> None:
        """A model without a supported MoE router raises ConfigError listing the supported routers."""
        with pytest.raises(ConfigError, match=r"Qwen3MoeTopKRouter.*MixtralTopKRouter"):
            patch(nn.Sequential(nn.Linear(4, 4)))

    def test_misuse_raises(self) -> None:
        """Patching twice, a cache of the wrong shape, or J above k raise ConfigError."""
        model = _model("olmoe")
        with patch(model), pytest.raises(ConfigError, match="already patched"):
            patch(model)
        with pytest.raises(ConfigError, match="MoE layers"):
            patch(model, cache=ExpertCache(3, E, 2))
        with pytest.raises(ConfigError, match="protect_top_j"):
            patch(model, TokenPolicy(protect_top_j=K + 1))
        assert not any(isinstance(m, TokenRouterMixin) for m in model.modules())

    def test_trust_bias_is_bounded(self) -> None:
        """Trust enters as trust_max · tanh(trust): a huge trust shifts selection by at most trust_max."""
        model, ids = _model("qwen3-moe"), _ids()
        with torch.no_grad(), patch(model, TokenPolicy(trust_max=1e-6, protect_top_j=1)) as handle:
            for layer in range(handle.num_layers):
                handle.set_trust(layer, torch.linspace(-1e9, 1e9, E))
            out = model(input_ids=ids)
        with torch.no_grad():
            ref = model(input_ids=ids)
        assert torch.equal(out.logits, ref.logits)
