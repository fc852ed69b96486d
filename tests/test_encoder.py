"""Micro-batched encoding: concurrent callers share forwards and each gets its own vector."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import numpy as np
import pytest

from moe_agents import BackendError, load_pipeline
from moe_agents.routing.encoder import BatchingEncoder, LiteLLMEncoder
from moe_agents.testing import HashingEncoder


class Recording(HashingEncoder):
    """A HashingEncoder that records the batches it is asked to encode (as a blocking encoder, so
    the batching path is what runs)."""

    blocking = True

    def __init__(self) -> None:
        super().__init__(64)
        self.batches: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        return super().encode(texts)


class Failing(HashingEncoder):
    blocking = True

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("encoder broke")


class TestBatchingEncoder:
    async def test_concurrent_callers_share_forwards_and_get_their_own_vectors(self) -> None:
        """100 concurrent embeds run in far fewer forwards, and each result is that text's embedding."""
        enc = Recording()
        batching = BatchingEncoder(enc, max_batch=32, window_s=0.005)
        texts = [f"query number {i} about topic {i % 7}" for i in range(100)]
        out: dict[str, np.ndarray] = {}

        async def one(text: str) -> None:
            out[text] = await batching.embed(text)

        async with anyio.create_task_group() as tg:
            for t in texts:
                tg.start_soon(one, t)
        reference = HashingEncoder(64).encode(texts)
        for i, t in enumerate(texts):
            np.testing.assert_array_equal(out[t], reference[i])
        assert len(enc.batches) <= 8
        assert max(len(b) for b in enc.batches) <= 32
        assert sorted(t for b in enc.batches for t in b) == sorted(texts)

    async def test_cache_serves_repeats_without_a_forward(self) -> None:
        """A text embedded recently is served from the LRU cache."""
        enc = Recording()
        batching = BatchingEncoder(enc, window_s=0)
        first = await batching.embed("hello")
        second = await batching.embed("hello")
        assert enc.batches == [["hello"]]
        np.testing.assert_array_equal(first, second)

    async def test_cache_is_bounded(self) -> None:
        """The cache keeps at most cache_size embeddings (least recently used evicted)."""
        enc = Recording()
        batching = BatchingEncoder(enc, window_s=0, cache_size=2)
        for t in ("a", "b", "c", "a"):
            await batching.embed(t)
        assert [b[0] for b in enc.batches] == ["a", "b", "c", "a"]

    async def test_errors_reach_every_caller_of_the_batch(self) -> None:
        """If the encoder fails, each caller in the batch gets the error and nobody hangs."""
        batching = BatchingEncoder(Failing(), window_s=0.005)
        errors: list[str] = []

        async def one(text: str) -> None:
            try:
                await batching.embed(text)
            except RuntimeError as exc:
                errors.append(str(exc))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(one, f"t{i}")
        assert errors == ["encoder broke"] * 5

    async def test_cancelled_caller_does_not_block_the_others(self) -> None:
        """A caller cancelled while waiting leaves the queue, and the rest still get results."""
        batching = BatchingEncoder(Recording(), window_s=0.01)
        results: list[np.ndarray] = []

        async def one(text: str) -> None:
            results.append(await batching.embed(text))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                with anyio.CancelScope() as doomed:
                    doomed.cancel()
                    await batching.embed("never")  # cancelled before it can lead
                for i in range(4):
                    tg.start_soon(one, f"t{i}")
        assert len(results) == 4

    @pytest.mark.parametrize("n", [1, 64, 65], ids=["one", "full-batch", "batch-plus-one"])
    async def test_batches_split_at_max_batch(self, n: int) -> None:
        """No forward exceeds max_batch, whatever the number of callers."""
        enc = Recording()
        batching = BatchingEncoder(enc, max_batch=64, window_s=0.005)
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(batching.embed, f"text {i}")
        assert all(len(b) <= 64 for b in enc.batches)
        assert sum(len(b) for b in enc.batches) == n


class TestLiteLLMEncoder:
    def test_embeds_through_litellm_and_normalises(self) -> None:
        """A hosted embedding (litellm's offline mock here) comes back L2-normalised, one row per text."""
        enc = LiteLLMEncoder(
            "openai/text-embedding-3-small", api_key="sk-x", params={"mock_response": [3.0, 4.0]}
        )
        out = enc.encode(["hello"])
        np.testing.assert_allclose(out, [[0.6, 0.8]], rtol=1e-6)
        assert enc.name == "litellm:openai/text-embedding-3-small"
        assert "sk-x" not in repr(enc)

    def test_wrong_number_of_embeddings_is_a_backend_error(self) -> None:
        """A provider answering with fewer embeddings than texts is reported, not silently misaligned."""
        enc = LiteLLMEncoder(
            "openai/text-embedding-3-small", api_key="sk-x", params={"mock_response": [1.0, 0.0]}
        )
        with pytest.raises(BackendError, match="1 embeddings returned for 2 texts"):
            enc.encode(["a", "b"])

    def test_yaml_names_a_hosted_encoder(self, tmp_path: Path) -> None:
        """`router.encoder: litellm:<model>` builds a LiteLLMEncoder."""
        path = tmp_path / "p.yaml"
        path.write_text(
            "router: {encoder: 'litellm:openai/text-embedding-3-small'}\n"
            "experts:\n  - {name: a, kind: coding}\n"
        )
        router = load_pipeline(path).router
        assert isinstance(router.encoder, LiteLLMEncoder)


class TestInline:
    async def test_a_non_blocking_encoder_is_called_inline_and_cached(self) -> None:
        """An encoder with ``blocking = False`` encodes on the event loop, one text per call, and
        the LRU cache still answers a repeated text."""

        class Inline(HashingEncoder):
            def __init__(self) -> None:
                super().__init__(64)
                self.threads: list[int] = []

            def encode(self, texts: Sequence[str]) -> np.ndarray:
                self.threads.append(threading.get_ident())
                return super().encode(texts)

        enc = Inline()
        batching = BatchingEncoder(enc)
        first = await batching.embed("hello world")
        again = await batching.embed("hello world")
        assert enc.threads == [threading.get_ident()]  # once, on this (the event loop's) thread
        np.testing.assert_array_equal(first, again)
        np.testing.assert_allclose(first, HashingEncoder(64).encode(["hello world"])[0])
