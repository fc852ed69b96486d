"""A tiny Qwen3-MoE language model trained from scratch on GSM8K train text, on CPU, cached.

``train_tiny_moe`` trains (or reuses) a seeded Qwen3-MoE-architecture causal LM on GSM8K *train*
questions and answers with a byte-level tokenizer (``encode``; no download). The checkpoint is the
subject of the token-router benchmark (``bench.evaluate_token_router``).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..logging import get_logger

__all__ = ["BOS", "EOS", "SEQ_LEN", "VOCAB", "encode", "gsm8k_texts", "progress_bar", "train_tiny_moe"]

log = get_logger(__name__)


BOS, EOS = 256, 257
VOCAB = 264  # 256 bytes + BOS/EOS, padded to a multiple of 8
SEQ_LEN = 128
MARKER = "train.json"


def encode(text: str) -> list[int]:
    """Byte-level tokens of ``text`` framed by BOS/EOS."""
    return [BOS, *text.encode("utf-8"), EOS]


def gsm8k_texts(data_dir: Path, split: str, limit: int | None = None) -> list[str]:
    """GSM8K ``split`` items as ``"Question: …\nAnswer: …"`` texts, in file order (at most ``limit``).

    Raises:
        ConfigError: the split's file is not in ``data_dir/gsm8k``.
    """
    path = Path(data_dir) / "gsm8k" / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"GSM8K {split} split not found at {path}")
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            texts.append(f"Question: {item['question']}\nAnswer: {item['answer']}")
            if limit is not None and len(texts) >= limit:
                break
    return texts


def _config(layers: int, experts: int, top_k: int, hidden: int) -> Any:
    from transformers import Qwen3MoeConfig

    heads = max(1, hidden // 32)
    return Qwen3MoeConfig(  # type: ignore[call-arg]  # head_dim is a Qwen3 config field untyped in __init__
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=hidden // heads,
        num_experts=experts,
        num_experts_per_tok=top_k,
        norm_topk_prob=True,
        max_position_embeddings=4 * SEQ_LEN,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        bos_token_id=BOS,
        eos_token_id=EOS,
        tie_word_embeddings=True,
    )


def train_tiny_moe(
    data_dir: Path,
    out_dir: Path,
    *,
    layers: int = 4,
    experts: int = 32,
    top_k: int = 4,
    hidden: int = 128,
    steps: int = 3000,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    max_minutes: float = 10.0,
    progress: bool = True,
) -> Path:
    """Trains a Qwen3-MoE causal LM from scratch on GSM8K train text, or reuses its cached checkpoint.

    The checkpoint folder is named by a hash of every setting (and the training file's size), so a
    second call with the same settings loads nothing and trains nothing.

    Args:
        data_dir: the evaluation data folder (reads ``gsm8k/train.jsonl`` only).
        out_dir: where checkpoints are cached.
        layers: decoder layers (all MoE).
        experts: experts per layer (E).
        top_k: experts per token (k).
        hidden: model width.
        steps: optimiser steps at most.
        batch_size: sequences of ``SEQ_LEN`` bytes per step.
        lr: AdamW peak learning rate (cosine decay to 10 %).
        seed: seeds the weights and the batches.
        max_minutes: stops training after this wall time even if ``steps`` are not done.
        progress: show a progress bar on stderr.

    Returns:
        The checkpoint folder (``save_pretrained`` format, with ``train.json``).
    """
    from transformers import Qwen3MoeForCausalLM

    train_file = Path(data_dir) / "gsm8k" / "train.jsonl"
    texts = gsm8k_texts(data_dir, "train")
    settings = {
        "layers": layers, "experts": experts, "top_k": top_k, "hidden": hidden, "steps": steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "max_minutes": max_minutes, "seq_len": SEQ_LEN,
        "data": [train_file.name, train_file.stat().st_size], "vocab": VOCAB,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(out_dir) / f"tiny-qwen3-moe-{key}"
    if (path / MARKER).is_file():
        log.info("token_bench.checkpoint_reused", path=str(path))
        return path

    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(_config(layers, experts, top_k, hidden))
    model.train()
    stream = torch.tensor([t for text in texts for t in encode(text)], dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, min(100, steps // 10))

    def lr_at(step: int, elapsed: float) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        # cosine decay over whichever budget runs out first: the steps or the wall time
        done = max((step - warmup) / max(1, steps - warmup), elapsed / (max_minutes * 60))
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))

    start, losses, step = time.perf_counter(), [], 0
    bar = progress_bar(progress)
    with bar:
        task = bar.add_task("training tiny Qwen3-MoE", total=steps)
        for step in range(steps):
            elapsed = time.perf_counter() - start
            if elapsed > max_minutes * 60:
                break
            offsets = torch.randint(0, len(stream) - SEQ_LEN - 1, (batch_size,), generator=gen)
            batch = torch.stack([stream[o : o + SEQ_LEN] for o in offsets.tolist()])  # (B, T)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, elapsed)
            out = model(input_ids=batch, labels=batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(out.loss.detach().item())
            bar.update(task, advance=1, description=f"training tiny Qwen3-MoE (loss {losses[-1]:.3f})")
        else:
            step = steps
    minutes = (time.perf_counter() - start) / 60
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tail = losses[-50:] or [float("nan")]
    record = {
        "settings": settings,
        "steps_done": step,
        "minutes": minutes,
        "final_loss": sum(tail) / len(tail),
    }
    (path / MARKER).write_text(json.dumps(record, indent=2))
    log.info(
        "token_bench.trained",
        path=str(path),
        steps=step,
        minutes=round(minutes, 2),
        loss=record["final_loss"],
    )
    return path


def progress_bar(enabled: bool) -> Any:
    """A transient rich progress bar on stderr (disabled when ``enabled`` is false)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=True,
    )
