"""LiteLLMBackend against litellm's offline ``mock_response`` and a fake OpenAI server on loopback."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from moe_agents.backends import GenerationSettings, LiteLLMBackend
from moe_agents.errors import BackendError, BackendTimeout, ConfigError

# litellm's streaming path makes pydantic build a schema for a TypedDict with ReadOnly items.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Items? .* on TypedDict class .* `ReadOnly` qualifier:UserWarning"
)

HELLO = [{"role": "user", "content": "hello"}]
KEY = "sk-test-SECRET-0123456789"


@dataclass
class FakeOpenAI:
    """An OpenAI-compatible ``/chat/completions`` endpoint that records each request body.

    The reply depends on the last user message: ``status:<code>`` answers with that HTTP error
    (its message echoes the Authorization header, as careless servers do); anything else gets
    ``pong``.
    """

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI server on 127.0.0.1, for checking what reaches the provider."""
    state = FakeOpenAI(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            prompt = body["messages"][-1]["content"]
            if prompt.startswith("status:"):
                status = int(prompt.removeprefix("status:"))
                reply: dict[str, Any] = {
                    "error": {"message": f"refused {self.headers.get('Authorization')}", "type": "x"}
                }
            else:
                status = 200
                reply = {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": "served-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "pong"},
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                }
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def mock(reply: Any, **kwargs: Any) -> LiteLLMBackend:
    """A backend whose calls litellm answers offline with ``reply`` (a text or an exception)."""
    return LiteLLMBackend("gpt-4o-mini", num_retries=0, params={"mock_response": reply}, **kwargs)


class TestLiteLLMBackendInit:
    def test_name_defaults_to_model(self) -> None:
        """Without a name the backend is called ``litellm:<model>``."""
        assert LiteLLMBackend("ollama/llama3").name == "litellm:ollama/llama3"
        assert LiteLLMBackend("ollama/llama3", name="local").name == "local"

    def test_modalities_are_a_frozenset(self) -> None:
        """Declared modalities are kept as a frozenset."""
        assert LiteLLMBackend("gpt-4o", modalities=["image", "image"]).modalities == frozenset({"image"})

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"params": {"model": "other"}},
            {"params": {"api_key": "sk-x"}},
            {"num_retries": -1},
            {"timeout_s": 0},
            {"max_tokens": 0},
            {"temperature": -0.5},
        ],
        ids=["params-model", "params-api-key", "retries", "timeout", "max-tokens", "temperature"],
    )
    def test_rejects_bad_options(self, kwargs: dict[str, Any]) -> None:
        """Out-of-range options and ``params`` keys that shadow arguments are configuration errors."""
        with pytest.raises(ConfigError):
            LiteLLMBackend("gpt-4o-mini", **kwargs)

    @pytest.mark.parametrize("key", [KEY, SecretStr(KEY)], ids=["str", "secretstr"])
    def test_api_key_is_hidden(self, key: str | SecretStr) -> None:
        """The API key appears in neither repr nor str, and is stored as a SecretStr."""
        backend = LiteLLMBackend("gpt-4o-mini", api_key=key)
        assert repr(backend) == "LiteLLMBackend(model='gpt-4o-mini')"
        assert KEY not in str(backend)
        assert isinstance(backend.api_key, SecretStr)
        assert backend.api_key.get_secret_value() == KEY


class TestLiteLLMBackendComplete:
    async def test_returns_text_model_and_usage(self) -> None:
        """A plain call returns the model's text, the model name, token counts and a price."""
        completion = await mock("Hi there").complete(HELLO)
        assert completion.text == "Hi there"
        assert completion.model == "gpt-4o-mini"
        assert completion.finish_reason == "stop"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 20)
        assert completion.usage.cost_usd > 0

    async def test_unpriced_model_costs_zero(self) -> None:
        """A model litellm has no price for still answers, with cost 0."""
        backend = LiteLLMBackend(
            "openai/my-finetune", api_base="http://127.0.0.1:9", num_retries=0, params={"mock_response": "ok"}
        )
        completion = await backend.complete(HELLO)
        assert completion.text == "ok"
        assert completion.usage.cost_usd == 0.0

    async def test_streams_chunks_in_order(self) -> None:
        """With on_chunk, every non-empty piece arrives in order and the pieces join to the text."""
        chunks: list[str] = []

        async def on_chunk(text: str) -> None:
            chunks.append(text)

        reply = "The quick brown fox jumps over the lazy dog"
        completion = await mock(reply).complete(HELLO, on_chunk=on_chunk)
        assert len(chunks) > 1
        assert all(chunks)
        assert "".join(chunks) == completion.text == reply
        assert completion.finish_reason == "stop"
        assert completion.usage.prompt_tokens > 0
        assert completion.usage.completion_tokens > 0

    async def test_sends_defaults_and_key(self, fake_openai: FakeOpenAI) -> None:
        """Constructor defaults reach the provider; the reply's text, usage and finish reason come back."""
        backend = LiteLLMBackend(
            "openai/served-model",
            api_base=fake_openai.url,
            api_key=KEY,
            temperature=0.3,
            max_tokens=7,
            num_retries=0,
        )
        completion = await backend.complete(HELLO)
        sent = fake_openai.requests[-1]
        assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("served-model", 0.3, 7)
        assert "top_p" not in sent and "stop" not in sent
        assert completion.text == "pong"
        assert completion.finish_reason == "length"
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 1)

    async def test_settings_override_defaults(self, fake_openai: FakeOpenAI) -> None:
        """GenerationSettings fields replace the constructor defaults for that call only."""
        backend = LiteLLMBackend(
            "openai/served-model", api_base=fake_openai.url, api_key=KEY, temperature=0.3, max_tokens=7
        )
        settings = GenerationSettings(max_tokens=50, temperature=0.9, top_p=0.5, stop=("END",))
        await backend.complete(HELLO, settings=settings)
        overridden = fake_openai.requests[-1]
        await backend.complete(HELLO, settings=GenerationSettings(top_p=0.8))
        partial = fake_openai.requests[-1]
        assert (overridden["max_tokens"], overridden["temperature"]) == (50, 0.9)
        assert (overridden["top_p"], overridden["stop"]) == (0.5, ["END"])
        assert (partial["max_tokens"], partial["temperature"], partial["top_p"]) == (7, 0.3, 0.8)

    async def test_logs_without_the_key(self) -> None:
        """The debug event names the backend and never carries the API key."""
        with capture_logs() as logs:
            await mock("ok", api_key=KEY).complete(HELLO)
        assert [e["event"] for e in logs] == ["backend.request"]
        assert logs[0]["backend"] == "litellm:gpt-4o-mini"
        assert KEY not in repr(logs)

    async def test_load_and_unload_are_noops(self) -> None:
        """load and unload may be called any number of times and the backend keeps answering."""
        backend = mock("still here")
        await backend.unload()
        await backend.load()
        await backend.load()
        await backend.unload()
        assert (await backend.complete(HELLO)).text == "still here"


def _raising(name: str) -> Any:
    """A litellm exception instance to use as mock_response, built only when litellm is imported."""
    import litellm

    return getattr(litellm, name)(message="mock failure", llm_provider="openai", model="gpt-4o-mini")


class TestLiteLLMBackendErrors:
    @pytest.mark.parametrize(
        ("reply", "cause", "retryable"),
        [
            ("litellm.RateLimitError", "RateLimitError", True),
            ("litellm.InternalServerError", "InternalServerError", True),
            ("litellm.ContextWindowExceededError", "ContextWindowExceededError", False),
            ("APIConnectionError", "APIConnectionError", True),
            ("ServiceUnavailableError", "ServiceUnavailableError", True),
            ("AuthenticationError", "AuthenticationError", False),
        ],
        ids=["rate-limit", "internal", "context-window", "connection", "unavailable", "auth"],
    )
    async def test_translates_errors(self, reply: str, cause: str, retryable: bool) -> None:
        """litellm errors become BackendError with the right retryable flag and the original as cause."""
        import litellm

        mock_reply = reply if reply.startswith("litellm.") else _raising(reply)
        with pytest.raises(BackendError) as info:
            await mock(mock_reply).complete(HELLO)
        assert type(info.value) is BackendError
        assert info.value.retryable is retryable
        assert info.value.backend == "litellm:gpt-4o-mini"
        assert isinstance(info.value.__cause__, getattr(litellm, cause))

    async def test_timeout_becomes_backend_timeout(self) -> None:
        """A litellm timeout becomes a retryable BackendTimeout carrying the configured timeout."""
        import litellm

        backend = LiteLLMBackend(
            "gpt-4o-mini", timeout_s=0.01, num_retries=0, params={"mock_response": "x", "mock_timeout": True}
        )
        with pytest.raises(BackendTimeout) as info:
            await backend.complete(HELLO)
        assert info.value.retryable is True
        assert info.value.timeout_s == 0.01
        assert isinstance(info.value.__cause__, litellm.Timeout)

    async def test_error_mid_stream_is_translated(self) -> None:
        """A provider error raised while streaming becomes a retryable BackendError."""
        chunks: list[str] = []

        async def on_chunk(text: str) -> None:
            chunks.append(text)

        with pytest.raises(BackendError) as info:
            await mock("Exception: mock_streaming_error").complete(HELLO, on_chunk=on_chunk)
        assert info.value.retryable is True
        assert info.value.__cause__ is not None

    async def test_on_chunk_errors_pass_through(self) -> None:
        """An exception from the caller's on_chunk is re-raised unchanged, not blamed on the backend."""

        async def on_chunk(text: str) -> None:
            raise KeyError(text)

        with pytest.raises(KeyError):
            await mock("some streamed words").complete(HELLO, on_chunk=on_chunk)

    async def test_http_errors_do_not_leak_the_key(self, fake_openai: FakeOpenAI) -> None:
        """HTTP 429 is retryable, 401 is not, and a key echoed by the server is masked in the message."""
        backend = LiteLLMBackend("openai/served-model", api_base=fake_openai.url, api_key=KEY, num_retries=0)
        with pytest.raises(BackendError) as limited:
            await backend.complete([{"role": "user", "content": "status:429"}])
        with pytest.raises(BackendError) as refused:
            await backend.complete([{"role": "user", "content": "status:401"}])
        assert (limited.value.retryable, refused.value.retryable) == (True, False)
        assert KEY in str(refused.value.__cause__)
        assert KEY not in str(refused.value)
        assert "refused" in str(refused.value)


class TestBehindAGuard:
    async def test_a_failing_call_is_tried_at_most_attempts_times(self, fake_openai: FakeOpenAI) -> None:
        """Behind a retrying guard litellm does not retry too: a call that keeps failing reaches the
        provider exactly `attempts` times, whatever `num_retries` says."""
        from moe_agents.reliability import GuardedBackend, RetryPolicy

        backend = LiteLLMBackend("openai/served-model", api_base=fake_openai.url, api_key=KEY, num_retries=2)
        guarded = GuardedBackend(
            backend, retry=RetryPolicy(attempts=3, initial_s=0.0, max_s=0.0, jitter_s=0.0)
        )
        before = len(fake_openai.requests)
        with pytest.raises(BackendError) as info:
            await guarded.complete([{"role": "user", "content": "status:503"}])
        assert info.value.retryable is True
        assert len(fake_openai.requests) - before == 3
        assert (backend.num_retries, guarded.inner.num_retries) == (2, 0)  # type: ignore[attr-defined]

    def test_a_backend_without_retries_is_guarded_as_it_is(self) -> None:
        """A backend that does not retry is the guard's inner backend itself."""
        from moe_agents.reliability import GuardedBackend

        backend = LiteLLMBackend("gpt-4o-mini")
        assert backend.num_retries == 0 and GuardedBackend(backend).inner is backend


class TestBackendsImport:
    def test_import_is_lazy(self) -> None:
        """Importing moe_agents.backends imports neither litellm, torch nor transformers."""
        code = (
            "import sys, moe_agents.backends; "
            "print(sorted(m for m in ('litellm', 'torch', 'transformers') if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "[]"

    def test_all_is_complete(self) -> None:
        """__all__ lists exactly the public names the package re-exports."""
        import moe_agents.backends as backends

        public = {n for n, v in vars(backends).items() if not n.startswith("_") and not inspect.ismodule(v)}
        assert set(backends.__all__) == public
