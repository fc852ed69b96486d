"""The GGUF conversion cache: a tiny seeded Llama written as GGUF (Q8_0) is converted by transformers
once, and later loads read the cached safetensors folder."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from moe_agents.backends import Completion, TransformersBackend
from moe_agents.backends.gguf_cache import entry_path, write_entry

pytestmark = [
    # peft's PeftModel.from_pretrained calls a transformers method deprecated in 5.x
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

GGUF = "tiny.gguf"
HELLO = [{"role": "user", "content": "hello there, the model"}]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, seed: int) -> None:
    """A 2-layer, 32-wide Llama with seeded Q8_0 weights and a byte-level BPE tokenizer (the 256
    byte tokens, three merges and ChatML's two control tokens), as llama.cpp would write it."""
    import gguf
    import numpy as np
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    rng = np.random.default_rng(seed)
    tokens = [*bytes_to_unicode().values(), "Ġt", "he", "Ġthe", "<|im_start|>", "<|im_end|>"]
    hidden, ffn, layers, heads, kv_heads = 32, 64, 2, 4, 2
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 2) + [3, 3])  # 1 normal, 3 control
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_pad_token_id(len(tokens) - 1)
    writer.add_chat_template(CHATML)

    def matrix(name: str, shape: tuple[int, int]) -> None:
        q8 = gguf.GGMLQuantizationType.Q8_0
        packed = gguf.quants.quantize(rng.standard_normal(shape, dtype=np.float32) * 0.5, q8)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=q8)

    def norm(name: str) -> None:
        writer.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))

    matrix("token_embd.weight", (len(tokens), hidden))  # no output.weight: tied embeddings
    norm("output_norm.weight")
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", (hidden, hidden))
        matrix(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden))
        matrix(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        matrix(f"blk.{i}.attn_output.weight", (hidden, hidden))
        matrix(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        matrix(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        matrix(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@dataclass(frozen=True)
class Loaded:
    """A loaded backend, the log events of its load and its greedy reply to ``HELLO``."""

    backend: TransformersBackend
    events: list[str]
    reply: Completion


async def load(folder: Path, **kwargs: Any) -> Loaded:
    """A fresh backend on ``folder / GGUF``, loaded (its events captured), and its reply."""
    backend = TransformersBackend(folder, gguf_file=GGUF, max_new_tokens=8, **kwargs)
    with capture_logs() as logs:
        await backend.load()
    return Loaded(backend, [e["event"] for e in logs], await backend.complete(HELLO))


def weights(folder: Path, **kwargs: Any) -> dict[str, Any]:
    """The state dict transformers loads from a model folder (a cache entry) or a GGUF file."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).state_dict()


def same_weights(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def entries(cache: Path) -> list[Path]:
    """Everything in the cache folder, temporary folders included."""
    return sorted(cache.iterdir()) if cache.is_dir() else []


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The conversion cache's folder, under ``tmp_path`` (through ``MOE_AGENTS_CACHE_DIR``)."""
    monkeypatch.setenv("MOE_AGENTS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A folder holding the tiny GGUF file (seed 0)."""
    folder = tmp_path / "model"
    folder.mkdir()
    write_tiny_gguf(folder / GGUF, seed=0)
    return folder


class TestWarmStart:
    async def test_second_load_reads_the_cache(self, model: Path, cache: Path) -> None:
        """The first load converts the GGUF file and caches it as one entry, with no temporary folder
        left; a later load (a new backend, as in a new process) converts nothing and replies the same."""
        assert TransformersBackend(model, gguf_file=GGUF).needs_preparation() is True
        cold = await load(model)
        assert "backend.gguf_convert" in cold.events
        (entry,) = entries(cache)
        assert entry.name.startswith("tiny-")
        assert (entry / "model.safetensors").is_file()
        fresh = TransformersBackend(model, gguf_file=GGUF)
        assert fresh.needs_preparation() is False

        warm = await load(model)
        assert warm.events == ["backend.loaded"]
        assert warm.reply.text == cold.reply.text
        assert warm.reply.usage == cold.reply.usage
        assert warm.backend.nbytes == cold.backend.nbytes > 0
        assert entries(cache) == [entry]

    async def test_entry_holds_the_converted_weights(self, model: Path, cache: Path) -> None:
        """The cache entry holds exactly the weights transformers dequantises from the GGUF file."""
        await load(model)
        (entry,) = entries(cache)
        assert same_weights(weights(entry), weights(model, gguf_file=GGUF))

    def test_needs_no_preparation_without_gguf(self, tmp_path: Path) -> None:
        """A model folder (no GGUF file) or a missing GGUF file needs no preparation."""
        assert TransformersBackend(tmp_path).needs_preparation() is False
        assert TransformersBackend(tmp_path, gguf_file="missing.gguf").needs_preparation() is False

    async def test_adapter_on_a_cached_base(self, model: Path, cache: Path, tmp_path: Path) -> None:
        """A LoRA adapter applies on top of a cached GGUF base as on a freshly converted one."""
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model, gguf_file=GGUF)
        peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # LoRA's B starts at zero, which would leave the outputs unchanged
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        peft_model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)

        cold = await load(model, adapter=tmp_path / "adapter")
        warm = await load(model, adapter=tmp_path / "adapter")
        plain = await load(model)
        assert "backend.gguf_convert" in cold.events
        assert "backend.gguf_convert" not in warm.events + plain.events
        assert warm.reply == cold.reply
        assert warm.backend.nbytes > plain.backend.nbytes  # the LoRA weights are there


class TestCacheKey:
    async def test_changed_file_gets_a_new_entry(self, model: Path, cache: Path) -> None:
        """A GGUF file rewritten with other weights (same size) is converted again, into a new entry,
        and the old entry is left as it was."""
        await load(model)
        (first,) = entries(cache)
        size = (model / GGUF).stat().st_size
        write_tiny_gguf(model / GGUF, seed=1)
        assert (model / GGUF).stat().st_size == size
        assert TransformersBackend(model, gguf_file=GGUF).needs_preparation() is True

        changed = await load(model)
        assert "backend.gguf_convert" in changed.events
        assert len(entries(cache)) == 2
        (second,) = set(entries(cache)) - {first}
        assert same_weights(weights(second), weights(model, gguf_file=GGUF))
        assert not same_weights(weights(first), weights(second))

    async def test_dtype_gets_its_own_entry(self, model: Path, cache: Path) -> None:
        """The same file in another dtype is an entry of its own, holding that dtype's weights."""
        full = await load(model)
        half = await load(model, dtype="bfloat16")
        again = await load(model, dtype="bfloat16")
        assert "backend.gguf_convert" in half.events
        assert "backend.gguf_convert" not in again.events
        assert len(entries(cache)) == 2
        assert half.backend.nbytes == again.backend.nbytes < 0.6 * full.backend.nbytes

    def test_key_reads_the_content(self, model: Path, tmp_path: Path, cache: Path) -> None:
        """The entry is named by the file's stem and a key over its content, not its path."""
        copy = tmp_path / "elsewhere" / GGUF
        copy.parent.mkdir()
        copy.write_bytes((model / GGUF).read_bytes())
        assert entry_path(copy, None) == entry_path(model / GGUF, None)
        assert entry_path(model / GGUF, None).parent == cache
        assert entry_path(model / GGUF, None) != entry_path(model / GGUF, "float16")


def _garbage_weights(entry: Path) -> None:
    (entry / "model.safetensors").write_bytes(b"not a safetensors file")


def _missing_config(entry: Path) -> None:
    (entry / "config.json").unlink()


def _missing_tensor(entry: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(entry / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, entry / "model.safetensors", metadata={"format": "pt"})


def _truncated_weights(entry: Path) -> None:
    path = entry / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class TestBrokenCache:
    @pytest.mark.parametrize(
        "corrupt",
        [_garbage_weights, _truncated_weights, _missing_config, _missing_tensor],
        ids=["garbage-weights", "truncated-weights", "missing-config", "missing-tensor"],
    )
    async def test_corrupt_entry_is_rebuilt(self, model: Path, cache: Path, corrupt: Any) -> None:
        """An entry that does not load (or lacks weights its config names) is logged as a warning,
        converted again and replaced; the reply is the same, and the next load reads the new entry."""
        cold = await load(model)
        (entry,) = entries(cache)
        corrupt(entry)

        backend = TransformersBackend(model, gguf_file=GGUF, max_new_tokens=8)
        with capture_logs() as logs:
            await backend.load()
        warning = next(e for e in logs if e["event"] == "backend.gguf_cache_invalid")
        assert (warning["log_level"], warning["path"]) == ("warning", str(entry))
        assert "backend.gguf_convert" in [e["event"] for e in logs]
        assert await backend.complete(HELLO) == cold.reply
        assert entries(cache) == [entry]
        assert same_weights(weights(entry), weights(model, gguf_file=GGUF))
        assert (await load(model)).events == ["backend.loaded"]

    async def test_unwritable_cache_still_loads(
        self, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the cache folder cannot be created, loading converts, warns and works, every time."""
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("MOE_AGENTS_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
        backend = TransformersBackend(model, gguf_file=GGUF, max_new_tokens=8)
        with capture_logs() as logs:
            await backend.load()
        events = [e["event"] for e in logs]
        assert events[:2] == ["backend.gguf_convert", "backend.gguf_cache_unwritable"]
        assert (await backend.complete(HELLO)).usage.completion_tokens > 0
        assert TransformersBackend(model, gguf_file=GGUF).needs_preparation() is True


class _Saves:
    """Stands in for a model or tokenizer: ``save_pretrained`` writes one file, then may fail."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / self.name).write_text(self.name)
        if self.error is not None:
            raise self.error


class TestWriteEntry:
    def test_failed_write_leaves_nothing(self, tmp_path: Path) -> None:
        """A save that fails midway raises, and leaves neither the entry nor a temporary folder."""
        entry = tmp_path / "gguf" / "tiny-0123"
        with pytest.raises(OSError, match="disk full"):
            write_entry(entry, _Saves("model.safetensors"), _Saves("tokenizer.json", OSError("disk full")))
        assert entries(entry.parent) == []

    def test_another_writer_first(self, tmp_path: Path) -> None:
        """An entry another process wrote meanwhile is kept as it is, and the call says so."""
        entry = tmp_path / "gguf" / "tiny-0123"
        entry.mkdir(parents=True)
        (entry / "theirs").write_text("theirs")
        assert write_entry(entry, _Saves("model.safetensors"), _Saves("tokenizer.json")) is False
        assert entries(entry.parent) == [entry]
        assert [p.name for p in entry.iterdir()] == ["theirs"]

    def test_stale_temporary_folders_are_removed(self, tmp_path: Path) -> None:
        """A temporary folder older than a day (its writer died) is removed; a recent one, which may
        belong to a writer still at work, is kept."""
        root = tmp_path / "gguf"
        stale, recent = root / ".old-abc.tmp", root / ".new-def.tmp"
        for folder in (stale, recent):
            folder.mkdir(parents=True)
        two_days_ago = time.time() - 2 * 86_400
        os.utime(stale, (two_days_ago, two_days_ago))
        entry = root / "tiny-0123"
        assert write_entry(entry, _Saves("model.safetensors"), _Saves("tokenizer.json")) is True
        assert entries(root) == [recent, entry]
        assert sorted(p.name for p in entry.iterdir()) == ["model.safetensors", "tokenizer.json"]
