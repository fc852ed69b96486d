"""The registry of kinds that YAML may name: experts, backends, aggregators and scorers.

Every kind follows one contract: a pydantic model of its YAML options and a way to build it
(``BackendKind``, ``ExpertKind``, ``AggregatorKind``); the YAML builder validates a kind's options
with its model, so an unknown option is an error at its file, line and key that names the valid ones.

Names in YAML resolve only through this registry (built-ins, what ``register_*`` added, and the
entry points groups ``moe_agents.experts``, ``moe_agents.backends``, ``moe_agents.aggregators``,
``moe_agents.scorers``);
never through import paths written in a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from .aggregators.base import Aggregator
from .backends.base import Backend
from .backends.specs import BUILTIN_BACKENDS, BackendKind
from .errors import ConfigError
from .experts.base import Expert, Scorer
from .kinds import (
    BUILTIN_AGGREGATOR_KINDS,
    BUILTIN_EXPERT_KINDS,
    AggregatorKind,
    AggregatorOptions,
    ExpertKind,
    ExpertOptions,
)

__all__ = [
    "AggregatorKind",
    "BackendKind",
    "ExpertKind",
    "Registry",
    "register_aggregator",
    "register_backend",
    "register_expert",
    "register_scorer",
    "registry",
]

T = TypeVar("T")


@dataclass(slots=True)
class _Table(Generic[T]):
    what: str
    group: str
    coerce: Callable[[Any], T] = lambda item: item
    """Turns what an entry point loads into an item (an expert class into its ``ExpertKind``)."""
    items: dict[str, T] = field(default_factory=dict)
    _scanned: bool = False

    def add(self, name: str, item: T) -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{self.what} name must be alphanumeric (with - or _), got {name!r}")
        self.items[name] = item

    def get(self, name: str) -> T:
        if name not in self.items and not self._scanned:
            self._scanned = True
            for ep in entry_points(group=self.group):
                self.items.setdefault(ep.name, self.coerce(ep.load()))
        try:
            return self.items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {sorted(self.items)}") from None

    def known(self) -> list[str]:
        return sorted(self.items)


class Registry:
    """Expert kinds, backend kinds, aggregator strategies and quality scorers by name."""

    def __init__(self) -> None:
        self.experts: _Table[ExpertKind] = _Table("expert kind", "moe_agents.experts", _expert_kind)
        self.backends: _Table[BackendKind] = _Table("backend kind", "moe_agents.backends")
        self.aggregators: _Table[AggregatorKind] = _Table(
            "aggregation strategy", "moe_agents.aggregators", _aggregator_kind
        )
        self.scorers: _Table[Scorer] = _Table("scorer", "moe_agents.scorers")


def _expert_kind(item: Any) -> ExpertKind:
    return item if isinstance(item, ExpertKind) else ExpertKind(item)


def _aggregator_kind(item: Any) -> AggregatorKind:
    return item if isinstance(item, AggregatorKind) else AggregatorKind(item)


def _builtin_registry() -> Registry:
    from .scorers import BUILTIN_SCORERS

    reg = Registry()
    for kind, expert_kind in BUILTIN_EXPERT_KINDS.items():
        reg.experts.add(kind, expert_kind)
    for kind, backend_kind in BUILTIN_BACKENDS.items():
        reg.backends.add(kind, backend_kind)
    for name, aggregator_kind in BUILTIN_AGGREGATOR_KINDS.items():
        reg.aggregators.add(name, aggregator_kind)
    for name, scorer in BUILTIN_SCORERS.items():
        reg.scorers.add(name, scorer)
    return reg


registry = _builtin_registry()
"""The registry YAML pipelines use unless given another."""


def register_expert(
    kind: str, cls: type[Expert], options: type[BaseModel] = ExpertOptions, *, encoder: bool = False
) -> None:
    """Makes ``kind: <kind>`` in YAML build ``cls``.

    ``cls`` is called with every expert's keys (``name``, ``policy``, and ``backends``,
    ``system_prompt``, ``exemplars``, ``settings`` when given; an ``LLMExpert`` takes them all) and
    the keys of ``options`` that YAML set under ``options:`` (an ``ExpertOptions`` subclass; the
    default has none). ``encoder``: it also takes the pipeline's encoder as ``encoder``.
    """
    registry.experts.add(kind, ExpertKind(cls, options, encoder=encoder))


def register_backend(
    kind: str,
    spec: type[BaseModel],
    build: Callable[[Any], Backend],
    *,
    local_paths: tuple[str, ...] = (),
    resident: bool = False,
) -> None:
    """Makes ``kind: <kind>`` under ``backends:`` validate its options with ``spec``, built by ``build``.

    ``local_paths`` names the options that are files or folders (resolved relative to the YAML
    file); ``resident`` puts the backend under ``resources:`` (loaded and evicted within the budget).
    """
    registry.backends.add(kind, BackendKind(spec, build, local_paths=local_paths, resident=resident))


def register_aggregator(
    name: str, cls: type[Aggregator], options: type[BaseModel] = AggregatorOptions
) -> None:
    """Makes ``aggregation.strategy: <name>`` build ``cls`` with the keys of ``options`` (an
    ``AggregatorOptions`` subclass; the default has none) that YAML set under ``aggregation.options:``
    (and ``aggregation.synthesis_expert:``), as keywords."""
    registry.aggregators.add(name, AggregatorKind(cls, options))


def register_scorer(name: str, scorer: Scorer) -> None:
    """Makes ``scorer: <name>`` on an expert in YAML use ``scorer`` (``(query, answer) -> float | None``)."""
    registry.scorers.add(name, scorer)
