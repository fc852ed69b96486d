"""``semantic-router`` as a routing peer: the same encoder and the same exemplars, its defaults.

The peer is semantic-router's ``IndexedRouter`` (local in-memory index, no network) with one
``Route`` per expert whose utterances are that expert's exemplars, and a ``DenseEncoder`` that
calls this package's encoder, so both routers compare identical embeddings. Its defaults stand:
the 5 most similar utterances, mean score per route, no confidence threshold and no calibrator,
so it always names the best route. It reads the text only: it cannot see attachments.

semantic-router is imported on first use (``moe-agents[eval]``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from semantic_router.encoders import DenseEncoder

    from ..routing.encoder import Encoder

__all__ = ["PEER", "SemanticRouterPeer", "semantic_router_encoder"]

PEER = "semantic-router"
"""The peer's name in reports."""


@functools.cache
def _encoder_class() -> type[DenseEncoder]:
    try:
        from semantic_router.encoders import DenseEncoder
    except ImportError as exc:
        raise ConfigError(
            "the semantic-router peer needs the semantic-router package: install moe-agents[eval]"
        ) from exc

    class MoEAgentsEncoder(DenseEncoder):
        """semantic-router's dense encoder over a ``moe_agents`` encoder (same vectors)."""

        type: str = "moe-agents"
        inner: Any = None

        def __call__(self, docs: list[Any]) -> list[list[float]]:
            return self.inner.encode([str(d) for d in docs]).tolist()

    return MoEAgentsEncoder


def semantic_router_encoder(encoder: Encoder) -> DenseEncoder:
    """A semantic-router ``DenseEncoder`` whose embeddings are ``encoder``'s.

    Raises:
        ConfigError: semantic-router is not installed.
    """
    return _encoder_class()(name=encoder.name, inner=encoder)  # type: ignore[call-arg]


class SemanticRouterPeer:
    """semantic-router's default ``IndexedRouter`` over the experts' exemplars.

    Args:
        encoder: the encoder the compared router uses.
        exemplars: utterances per route (expert) name.

    Raises:
        ConfigError: semantic-router is not installed, or no route has exemplars.
    """

    def __init__(self, encoder: Encoder, exemplars: Mapping[str, Sequence[str]]) -> None:
        sr_encoder = semantic_router_encoder(encoder)
        from semantic_router import Route
        from semantic_router.routers import IndexedRouter

        routes = [Route(name=name, utterances=list(texts)) for name, texts in exemplars.items() if texts]
        if not routes:
            raise ConfigError("the semantic-router peer needs exemplars for at least one expert")
        self.router = IndexedRouter(encoder=sr_encoder, routes=routes)

    def route(self, texts: Sequence[str]) -> list[tuple[str | None, float | None]]:
        """The chosen route and its (raw, uncalibrated) score for each text; blocks, so async
        callers run it in a worker thread."""
        out: list[tuple[str | None, float | None]] = []
        for text in texts:
            choice = self.router(text)  # one RouteChoice: multiple routes were not asked for
            assert not isinstance(choice, list)
            out.append((choice.name, choice.confidence))
        return out
