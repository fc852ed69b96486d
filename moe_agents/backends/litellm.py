"""Hosted and local chat models through litellm (OpenAI, Anthropic, Ollama, vLLM, ...).

litellm is imported on the first call, never at import time: it is slow to import and, unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set, fetches its price list over the network. Its errors are
translated here, once, into ``BackendError`` / ``BackendTimeout``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType, ModuleType
from typing import Any

import anyio.to_thread
from pydantic import SecretStr

from ..errors import BackendError, BackendTimeout, ConfigError
from ..logging import get_logger
from ..types import Message, Usage
from .base import ChunkCallback, Completion, GenerationSettings

__all__ = ["LiteLLMBackend"]

log = get_logger(__name__)

_RESERVED_PARAMS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "api_base",
        "api_key",
        "temperature",
        "max_tokens",
        "top_p",
        "stop",
        "timeout",
        "num_retries",
    }
)
_RETRYABLE_ERRORS = (
    "RateLimitError",
    "APIConnectionError",
    "InternalServerError",
    "ServiceUnavailableError",
    "BadGatewayError",
)


def _import_litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    # Errors are translated and reported by moe-agents; litellm's "Give Feedback" banner on stdout
    # would corrupt the output of applications (e.g. `moe-agents ask --json`).
    litellm.suppress_debug_info = True
    return litellm


_imported: ModuleType | None = None


async def _litellm() -> ModuleType:
    """The litellm module, imported in a worker thread: the first import takes seconds, and a
    concurrent caller waits there for it to finish rather than seeing a half-initialised module.
    Once imported it is returned at once (a thread hop per call costs about 1 ms of CPU)."""
    global _imported
    if _imported is None:
        _imported = await anyio.to_thread.run_sync(_import_litellm)
    return _imported


class LiteLLMBackend:
    """A chat model reached through ``litellm.acompletion``.

    Args:
        model: the litellm model string (``gpt-4o-mini``, ``anthropic/claude-3-5-haiku-latest``,
            ``ollama/llama3.2``, ``openai/<name>`` with ``api_base`` for an OpenAI-compatible server).
        name: shown in logs and errors; defaults to ``litellm:<model>``.
        api_base: the server's base URL, for self-hosted or proxied models.
        api_key: the provider key; when ``None`` litellm reads the provider's environment variable.
        temperature: default sampling temperature (``GenerationSettings`` override it per call).
        max_tokens: default cap on generated tokens.
        timeout_s: seconds litellm waits for a reply before raising ``BackendTimeout``.
        num_retries: how many times litellm itself retries a failed call (for calls made directly;
            behind a ``GuardedBackend``, as every expert's backends are, the guard's
            ``RetryPolicy`` retries and this is 0: see ``without_retries``).
        modalities: attachment kinds the model accepts besides text (``("image",)``).
        params: further keyword arguments for ``litellm.acompletion`` (``{"mock_response": "hi"}``);
            keys this class sets itself are refused.

    Raises:
        ConfigError: an argument is out of range or ``params`` repeats a key set here.
    """

    def __init__(
        self,
        model: str,
        *,
        name: str | None = None,
        api_base: str | None = None,
        api_key: str | SecretStr | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float | None = None,
        num_retries: int = 0,
        modalities: Sequence[str] = (),
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if not model:
            raise ConfigError("LiteLLMBackend needs a model name")
        if temperature is not None and temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {temperature}")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        if timeout_s is not None and timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if num_retries < 0:
            raise ConfigError(f"num_retries must be >= 0, got {num_retries}")
        clashes = sorted(_RESERVED_PARAMS.intersection(params or {}))
        if clashes:
            raise ConfigError(f"params may not set {clashes}; use the LiteLLMBackend arguments instead")
        self.model = model
        self.name = name or f"litellm:{model}"
        self.api_base = api_base
        self.api_key: SecretStr | None = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.defaults = GenerationSettings(max_tokens=max_tokens, temperature=temperature)
        self.timeout_s = timeout_s
        self.num_retries = num_retries
        self.modalities = frozenset(modalities)
        self.params: Mapping[str, Any] = MappingProxyType(dict(params or {}))

    def __repr__(self) -> str:
        return f"LiteLLMBackend(model={self.model!r})"

    def without_retries(self) -> LiteLLMBackend:
        """This backend with ``num_retries=0`` (itself when it is already): a retrying guard in
        front of it would otherwise multiply its tries by litellm's."""
        if self.num_retries == 0:
            return self
        twin = copy.copy(self)
        twin.num_retries = 0
        return twin

    async def load(self) -> None:
        """Nothing to load: litellm opens connections per call."""

    async def unload(self) -> None:
        """Nothing to release."""

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        """Sends ``messages`` to the model; streams when ``on_chunk`` is given.

        Raises:
            BackendTimeout: the call ran past ``timeout_s``.
            BackendError: litellm or the provider failed (``retryable`` for rate limits, 5xx and
                connection errors).
        """
        litellm = await _litellm()
        request = self._request(messages, self.defaults.merged(settings))
        log.debug("backend.request", backend=self.name, model=self.model, stream=on_chunk is not None)
        if on_chunk is None:
            try:
                response = await litellm.acompletion(**request)
            except Exception as exc:
                raise self._translate(litellm, exc) from exc
            choice = response.choices[0]
            return Completion(
                text=choice.message.content or "",
                model=response.model or self.model,
                usage=self._usage(litellm, response),
                finish_reason=choice.finish_reason,
            )
        return await self._stream(litellm, request, on_chunk)

    async def _stream(
        self, litellm: ModuleType, request: dict[str, Any], on_chunk: ChunkCallback
    ) -> Completion:
        try:
            stream = await litellm.acompletion(**request, stream=True, stream_options={"include_usage": True})
        except Exception as exc:
            raise self._translate(litellm, exc) from exc
        parts: list[str] = []
        model, finish_reason, usage = self.model, None, Usage()
        chunks = aiter(stream)
        try:
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._translate(litellm, exc) from exc
                model = chunk.model or model
                if getattr(chunk, "usage", None) is not None:
                    usage = self._usage(litellm, chunk)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish_reason = choice.finish_reason or finish_reason
                if text := choice.delta.content:
                    parts.append(text)
                    await on_chunk(text)
        finally:
            if hasattr(stream, "aclose"):
                await stream.aclose()
        return Completion("".join(parts), model, usage, finish_reason)

    def _request(self, messages: Sequence[Message], settings: GenerationSettings) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "num_retries": self.num_retries,
            **self.params,
        }
        optional = {
            "api_base": self.api_base,
            "api_key": None if self.api_key is None else self.api_key.get_secret_value(),
            "timeout": self.timeout_s,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "top_p": settings.top_p,
            "stop": None if settings.stop is None else list(settings.stop),
        }
        request.update((k, v) for k, v in optional.items() if v is not None)
        return request

    def _usage(self, litellm: ModuleType, response: Any) -> Usage:
        usage = getattr(response, "usage", None)
        if usage is None:
            return Usage()
        known = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
        if isinstance(known, int | float):
            cost = float(known)  # litellm priced this response already (about 1 ms of CPU saved)
        else:
            try:
                cost = float(litellm.completion_cost(completion_response=response) or 0.0)
            except Exception:  # litellm raises for models missing from its price list
                cost = 0.0
        return Usage(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0), cost)

    def _translate(self, litellm: ModuleType, exc: Exception) -> BackendError:
        message = f"{self.name}: {type(exc).__name__}: {exc}"
        if self.api_key is not None and (secret := self.api_key.get_secret_value()):
            message = message.replace(secret, "**********")
        if isinstance(exc, litellm.Timeout):
            return BackendTimeout(message, backend=self.name, timeout_s=self.timeout_s)
        retryable_types = tuple(getattr(litellm, n) for n in _RETRYABLE_ERRORS if hasattr(litellm, n))
        return BackendError(message, backend=self.name, retryable=isinstance(exc, retryable_types))
