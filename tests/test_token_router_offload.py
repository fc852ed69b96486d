"""Real expert offload: same outputs as resident weights, memory drops, counters add up, restore is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from moe_agents.errors import ConfigError
from moe_agents.token_router import ExpertCache, TokenPolicy, patch
from moe_agents.token_router.offload import OffloadedExperts, offload_experts, parameter_bytes

E, K, VOCAB, HIDDEN, INTER = 8, 2, 128, 32, 16
EXPERT_BYTES = 3 * HIDDEN * INTER * 4  # gate_up (2I, H) + down (H, I), float32
_SMALL = dict(
    hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB
)


def _qwen3_moe(seed: int = 0, experts_implementation: str | None = None) -> nn.Module:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(
        **_SMALL, intermediate_size=64, moe_intermediate_size=INTER, num_experts=E, num_experts_per_tok=K,
        head_dim=8, initializer_range=0.5,
    )  # fmt: skip
    model = Qwen3MoeForCausalLM(cfg).eval()
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    return model


def _mixtral(seed: int = 0) -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    cfg = MixtralConfig(
        **_SMALL, intermediate_size=INTER, num_local_experts=E, num_experts_per_tok=K, head_dim=8,
        initializer_range=0.5,
    )  # fmt: skip
    return MixtralForCausalLM(cfg).eval()


def _ids(length: int = 12, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _expert_bytes(model: nn.Module) -> int:
    return sum(
        p.numel() * p.element_size()
        for n, p in model.named_parameters()
        if n.endswith(("gate_up_proj", "down_proj"))
    )


def _forwards(model: nn.Module) -> list[torch.Tensor]:
    """Logits of a batched prefill and a few single-token calls."""
    with torch.no_grad():
        outs = [model(input_ids=_ids()).logits]
        outs += [model(input_ids=_ids(1, 1, seed=s)).logits for s in range(3)]
    return outs


LOGITS_TOL = dict(rtol=1e-4, atol=1e-4)
"""What the fused kernels guarantee offloaded (see offload.py, "Exactness"): float32 rounding."""


def _assert_same_logits(out: torch.Tensor, ref: torch.Tensor, impl: str) -> None:
    if impl == "eager":
        assert torch.equal(out, ref), f"max |Δ| {(out - ref).abs().max().item():.3g}"
    else:
        torch.testing.assert_close(out, ref, **LOGITS_TOL)


class TestSameOutputs:
    @pytest.mark.parametrize("impl", ["eager", "batched_mm", "grouped_mm"])
    @pytest.mark.parametrize("capacity", [K, 4, E], ids=["C=k", "C=4", "C=E"])
    def test_logits_match_resident(self, tmp_path: Path, capacity: int, impl: str) -> None:
        """Offloaded logits are bit-identical to the resident model's with the eager kernel, and equal
        to float32 rounding with the fused ones, for every capacity."""
        model = _qwen3_moe(experts_implementation=impl)
        reference = _forwards(model)
        with offload_experts(model, tmp_path, capacity):
            offloaded = _forwards(model)
        for ref, out in zip(reference, offloaded, strict=True):
            _assert_same_logits(out, ref, impl)

    @pytest.mark.parametrize("impl", ["eager", "grouped_mm"])
    @pytest.mark.parametrize("capacity", [K, 4, E], ids=["C=k", "C=4", "C=E"])
    def test_greedy_generate_matches(self, tmp_path: Path, capacity: int, impl: str) -> None:
        """Greedy generation picks the same tokens with the same per-step logits."""
        model, prompt = _qwen3_moe(experts_implementation=impl), _ids(6, 1, seed=3)
        settings = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
        with torch.no_grad():
            ref = model.generate(prompt, **settings)
            with offload_experts(model, tmp_path, capacity):
                out = model.generate(prompt, **settings)
        assert torch.equal(out.sequences, ref.sequences)
        for a, b in zip(out.logits, ref.logits, strict=True):
            _assert_same_logits(a, b, impl)

    @pytest.mark.parametrize("impl", ["eager", "grouped_mm"])
    def test_mixtral_matches(self, tmp_path: Path, impl: str) -> None:
        """Another fused-experts architecture (Mixtral) gives the same logits offloaded at C = k."""
        model = _mixtral()
        model.set_experts_implementation(impl)
        reference = _forwards(model)
        with offload_experts(model, tmp_path, K) as handle:
            offloaded = _forwards(model)
            assert handle.stats().misses > 0
        for ref, out in zip(reference, offloaded, strict=True):
            _assert_same_logits(out, ref, impl)


class TestMemory:
    @pytest.mark.parametrize("capacity", [K, 4], ids=["C=k", "C=4"])
    def test_expert_bytes_drop_to_capacity_share(self, tmp_path: Path, capacity: int) -> None:
        """Expert weights held by the model shrink to C/E of before, and the whole model by the rest."""
        model = _qwen3_moe()
        experts_before, total_before = _expert_bytes(model), parameter_bytes(model)
        with offload_experts(model, tmp_path, capacity):
            assert _expert_bytes(model) == experts_before * capacity // E
            assert parameter_bytes(model) == total_before - experts_before * (E - capacity) // E
        assert parameter_bytes(model) == total_before

    def test_files_hold_every_expert(self, tmp_path: Path) -> None:
        """One safetensors file per MoE layer, one tensor per (weight, expert)."""
        from safetensors import safe_open

        with offload_experts(_qwen3_moe(), tmp_path, K) as handle:
            files = sorted(tmp_path.glob("*.safetensors"))
            assert [f.name for f in files] == ["layer000.safetensors", "layer001.safetensors"]
            with safe_open(str(files[0]), framework="pt") as f:
                assert len(list(f.keys())) == 2 * E
            assert handle.expert_bytes == [EXPERT_BYTES, EXPERT_BYTES]


class TestCounters:
    def test_counts_add_up(self, tmp_path: Path) -> None:
        """Per layer: hits + misses = (token, expert) lookups, bytes = misses × expert bytes, time > 0."""
        model = _qwen3_moe()
        with offload_experts(model, tmp_path, K) as handle:
            tokens = sum(ids.numel() for ids in [_ids(), *(_ids(1, 1, seed=s) for s in range(3))])
            _forwards(model)
            for layer in range(handle.num_layers):
                stats = handle.stats(layer)
                assert stats.misses > 0
                assert stats.hits + stats.misses == tokens * K
                assert stats.bytes_copied == stats.misses * EXPERT_BYTES
                assert stats.copy_seconds > 0.0
            assert handle.stats().lookups == handle.num_layers * tokens * K

    def test_full_capacity_misses_each_expert_once(self, tmp_path: Path) -> None:
        """With C = E every expert is loaded at most once, then only hit."""
        model = _qwen3_moe()
        with offload_experts(model, tmp_path, E) as handle:
            _forwards(model)
            _forwards(model)
            assert all(0 < handle.stats(layer).misses <= E for layer in range(handle.num_layers))

    def test_decode_counts_equal_the_counting_cache(self, tmp_path: Path) -> None:
        """Decoding one token per call, the real LRU counts what the counting ExpertCache('lru') counts."""
        model, ids = _qwen3_moe(), _ids(30, 1, seed=7)
        trace: list[list[torch.Tensor]] = [[], []]
        gates = [layer.mlp.gate for layer in model.model.layers]
        hooks = [
            g.register_forward_hook(lambda _m, _i, out, i=i: trace[i].append(out[2].detach()))
            for i, g in enumerate(gates)
        ]
        try:
            with torch.no_grad(), offload_experts(model, tmp_path, 3) as handle:
                for t in range(ids.shape[1]):
                    model(input_ids=ids[:, t : t + 1])
                real = [handle.stats(layer) for layer in range(2)]
        finally:
            for h in hooks:
                h.remove()
        cache = ExpertCache(2, E, 3, "lru")
        for layer in range(2):
            hits, misses = cache.access(layer, torch.cat(trace[layer]))
            assert (real[layer].hits, real[layer].misses) == (hits, misses)

    def test_resident_mask_never_exceeds_capacity(self, tmp_path: Path) -> None:
        """At most C experts are resident per layer, and the mask names the ones last used."""
        model = _qwen3_moe()
        with torch.no_grad(), offload_experts(model, tmp_path, K) as handle:
            model(input_ids=_ids(1, 1))
            masks = [handle.resident_mask(layer) for layer in range(handle.num_layers)]
        assert [int(m.sum()) for m in masks] == [K, K]


class TestRestore:
    def test_restore_is_bit_identical(self, tmp_path: Path) -> None:
        """restore() puts back the same modules and Parameter objects with bit-identical values."""
        model = _qwen3_moe()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        objects = dict(model.named_parameters())
        experts_types = [type(layer.mlp.experts) for layer in model.model.layers]
        handle = offload_experts(model, tmp_path, K)
        assert all(isinstance(layer.mlp.experts, OffloadedExperts) for layer in model.model.layers)
        _forwards(model)
        handle.restore()
        handle.restore()  # idempotent
        after = dict(model.named_parameters())
        assert after.keys() == before.keys()
        assert all(after[n] is objects[n] and torch.equal(after[n], before[n]) for n in before)
        assert [type(layer.mlp.experts) for layer in model.model.layers] == experts_types
        assert not handle.active


class TestMisuse:
    def test_capacity_below_top_k_raises(self, tmp_path: Path) -> None:
        """A capacity below the router's top-k cannot serve one token: ConfigError, model untouched."""
        model = _qwen3_moe()
        with pytest.raises(ConfigError, match=r"top-k \(2\)") as info:
            offload_experts(model, tmp_path, K - 1)
        assert info.value.key == "capacity_per_layer"
        assert not any(isinstance(m, OffloadedExperts) for m in model.modules())

    def test_capacity_above_experts_raises(self, tmp_path: Path) -> None:
        """More slots than experts is a ConfigError."""
        with pytest.raises(ConfigError, match="number of experts"):
            offload_experts(_qwen3_moe(), tmp_path, E + 1)

    def test_non_moe_model_raises(self, tmp_path: Path) -> None:
        """A model without fused MoE experts is a ConfigError naming the model class."""
        with pytest.raises(ConfigError, match="no fused MoE experts module in Sequential"):
            offload_experts(nn.Sequential(nn.Linear(4, 4)), tmp_path, 2)

    def test_offloading_twice_raises(self, tmp_path: Path) -> None:
        """Offloading an offloaded model is a ConfigError."""
        model = _qwen3_moe()
        with offload_experts(model, tmp_path / "a", K), pytest.raises(ConfigError, match="already offloaded"):
            offload_experts(model, tmp_path / "b", K)


class TestWithTokenRouter:
    def test_handle_is_a_residency_source_for_patch(self, tmp_path: Path) -> None:
        """patch(cache=handle) biases routing towards really resident experts: the real hit rate rises."""
        ids = _ids(60, 1, seed=5)

        def decode(policy: TokenPolicy) -> float:
            model = _qwen3_moe()
            with torch.no_grad(), offload_experts(model, tmp_path, 4) as handle:
                with patch(model, policy, cache=handle):
                    for t in range(ids.shape[1]):
                        model(input_ids=ids[:, t : t + 1])
                return handle.stats().hit_rate

        plain, ours = decode(TokenPolicy()), decode(TokenPolicy(lam=0.5, protect_top_j=1))
        assert ours > plain + 0.05


def test_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/token_router_offload.py runs and prints a hit rate for both routers."""
    import runpy

    runpy.run_path(
        str(Path(__file__).resolve().parents[1] / "examples" / "token_router_offload.py"), run_name="__main__"
    )
    out = capsys.readouterr().out
    assert "plain top-k : expert-cache hit rate" in out and "token router: expert-cache hit rate" in out
