"""YAML options of the built-in backend kinds (``litellm``, ``transformers``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .base import Backend

__all__ = ["BUILTIN_BACKENDS", "BackendKind", "LiteLLMSpec", "TransformersSpec"]


@dataclass(frozen=True, slots=True)
class BackendKind:
    """How to build a backend kind: a pydantic model of its YAML options and a factory."""

    spec: type[BaseModel]
    build: Callable[[Any], Backend]


class LiteLLMSpec(BaseModel):
    """``kind: litellm``: any provider litellm supports (``openai/gpt-4o-mini``, ``ollama/llama3``...).

    Fields are ``LiteLLMBackend``'s constructor arguments."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "litellm"
    model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    num_retries: int = Field(default=2, ge=0)
    modalities: list[str] = []
    params: dict[str, Any] = {}


class TransformersSpec(BaseModel):
    """``kind: transformers``: a local model folder or GGUF file (``pkg:<package>`` for one in a wheel).

    Fields are ``TransformersBackend``'s constructor arguments."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "transformers"
    model: str
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    max_concurrency: int = Field(default=1, ge=1)
    modalities: list[str] = []


def _litellm(spec: LiteLLMSpec) -> Backend:
    from .litellm import LiteLLMBackend

    return LiteLLMBackend(**spec.model_dump(exclude={"kind"}))


def _transformers(spec: TransformersSpec) -> Backend:
    from .transformers import TransformersBackend

    return TransformersBackend(**spec.model_dump(exclude={"kind"}))


BUILTIN_BACKENDS = {
    "litellm": BackendKind(LiteLLMSpec, _litellm),
    "transformers": BackendKind(TransformersSpec, _transformers),
}
