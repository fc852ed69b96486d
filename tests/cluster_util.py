"""What the Ray tests share: a scripted backend double that runs in replicas, an expert for it, a
pipeline around it, and the YAML of a replay backend placed on two replicas."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from ray import cloudpickle

from moe_agents import LLMExpert, Pipeline, Router, RouterConfig
from moe_agents.backends.base import Backend, ChunkCallback, Completion, GenerationSettings
from moe_agents.errors import BackendError
from moe_agents.testing import HashingEncoder
from moe_agents.types import Message, Usage

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the doubles below run in replicas


def replay_yaml(placement: str) -> str:
    """A pipeline file: the replay backend (recorded answers of a real model) with ``placement``,
    on a private local cluster, behind two experts."""
    return f"""
ray: {{address: local, num_cpus: 2}}
backends:
  recorded:
    kind: replay
    dataset: mmlu
    model: mixtral-8x7b
    missing: empty
    placement: {placement}
experts:
  - {{kind: reasoning, name: reader, backends: [recorded]}}
  - {{kind: knowledge, name: other, backends: [recorded]}}
"""


class Scripted:
    """A test double run in a replica: streams ``pieces``, then hangs (``hang_s``) or fails;
    writes ``marker`` when it is cancelled."""

    def __init__(
        self, pieces: Sequence[str], *, hang_s: float = 0.0, fail: bool = False, marker: str = ""
    ) -> None:
        self.name = "scripted"
        self.modalities: frozenset[str] = frozenset()
        self.pieces, self.hang_s, self.fail, self.marker = list(pieces), hang_s, fail, marker

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    async def complete(
        self,
        messages: Sequence[Message],
        /,
        *,
        settings: GenerationSettings | None = None,
        on_chunk: ChunkCallback | None = None,
    ) -> Completion:
        try:
            for piece in self.pieces:
                if on_chunk is not None:
                    await on_chunk(piece)
            await anyio.sleep(self.hang_s)
        except anyio.get_cancelled_exc_class():
            if self.marker:
                Path(self.marker).write_text("cancelled")
            raise
        if self.fail:
            raise BackendError("scripted failure on the replica", backend=self.name)
        return Completion("".join(self.pieces), "scripted-1", Usage(2, len(self.pieces)))


class Reader(LLMExpert):
    kind = "reader"
    default_exemplars = ("what is the answer", "answer this question")


def reader_pipeline(backend: Backend) -> Pipeline:
    """One ``Reader`` expert on ``backend``, routed top-1 with the hashing encoder."""
    return Pipeline(
        [Reader(backends=[backend])], router=Router(RouterConfig(top_k=1), encoder=HashingEncoder())
    )
