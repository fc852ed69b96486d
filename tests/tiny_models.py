"""Shared pieces of the tiny seeded language models the tests build from configs (no download):
the bundled encoder's WordPiece tokenizer and the sizes every tiny decoder here uses."""

from __future__ import annotations

from typing import Any

from moe_agents.resources import BUNDLED_ENCODER, resolve_path


def bundled_tokenizer() -> Any:
    """A fresh copy of all-MiniLM-L6-v2's tokenizer (the tests set its chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_path(BUNDLED_ENCODER))


def decoder_sizes(tokenizer: Any, **overrides: Any) -> dict[str, Any]:
    """Config keywords of a 2-layer, 32-wide decoder over ``tokenizer`` (Llama, Qwen2, ...)."""
    return {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
