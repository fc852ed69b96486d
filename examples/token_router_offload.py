"""Run a transformers MoE model with most experts on disk, routing towards the ones in memory.

The model here is a small Qwen3-MoE built from a config with random weights, so that the example
runs anywhere in seconds; with real weights, load them instead, e.g.
``AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-30B-A3B")`` (or the Qwen3-Omni thinker).

Run: ``python examples/token_router_offload.py``
"""

from __future__ import annotations

import tempfile

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from moe_agents.token_router import TokenPolicy, offload_experts, patch


def main() -> None:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(
        vocab_size=512, hidden_size=128, intermediate_size=256, moe_intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, num_experts=32,
        num_experts_per_tok=4, norm_topk_prob=True,
    )  # fmt: skip
    model = Qwen3MoeForCausalLM(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 16))
    capacity = 2 * config.num_experts_per_tok  # resident expert slots per MoE layer
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        for name, policy in (("plain top-k", None), ("token router", TokenPolicy(lam=0.1, protect_top_j=1))):
            # expert weights go to memory-mapped safetensors files; each layer keeps `capacity` slots
            with offload_experts(model, folder, capacity) as handle:
                routed = patch(model, policy, cache=handle) if policy is not None else None
                try:
                    model.generate(prompt, max_new_tokens=48, do_sample=False)
                finally:
                    if routed is not None:
                        routed.unpatch()  # the original routers are back, bit for bit
                stats = handle.stats()
            print(
                f"{name:12s}: expert-cache hit rate {stats.hit_rate:.2f}, "
                f"{stats.bytes_copied / 1e6:.1f} MB copied in {stats.copy_seconds * 1e3:.0f} ms"
            )
    # leaving the `with` blocks restored the experts: the model is whole and resident again


if __name__ == "__main__":
    main()
