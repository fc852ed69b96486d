"""The cross-reference checks of a pipeline, in one place for the YAML builder and ``Pipeline``.

The router, the aggregator and the A/B tests name experts; ``check_references`` checks that every
name they use is an expert, that expert names are unique and that routing can fill ``top_k``.
Each error's ``key`` is the dotted configuration key at fault (``router.fallback_expert``), so
the YAML builder can point at the file and line.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from ..errors import ConfigError
from ..management.ab import ABTest

__all__ = ["check_references"]


def check_references(
    names: Sequence[str],
    *,
    routed: Collection[str] | None = None,
    top_k: int,
    fallback_expert: str | None,
    referenced: Mapping[str, str],
    ab_tests: Sequence[ABTest] = (),
) -> None:
    """Raises ``ConfigError`` (with ``key`` set) for the first broken reference among the experts.

    Args:
        names: the experts' names, in order.
        routed: the experts routing may choose (``None``: all of them).
        top_k: the router's ``top_k``.
        fallback_expert: the router's fallback expert, if any.
        referenced: experts the aggregator calls by name, by the option naming each
            (``Aggregator.referenced_experts``).
        ab_tests: the A/B tests; both variants must be experts.
    """
    if not names:
        raise ConfigError("a pipeline needs at least one expert", key="experts")
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"duplicate expert name {name!r}", key=f"experts.{i}.name")
    available = len(names) if routed is None else len(routed)
    if top_k > available:
        raise ConfigError(f"top_k is {top_k} but there are only {available} experts", key="router.top_k")
    known = set(names)
    if fallback_expert is not None and fallback_expert not in known:
        raise ConfigError(
            f"fallback_expert {fallback_expert!r} is not an expert; experts: {list(names)}",
            key="router.fallback_expert",
        )
    for option, name in referenced.items():
        if name not in known:
            raise ConfigError(
                f"{option} {name!r} is not an expert; experts: {list(names)}", key=f"aggregation.{option}"
            )
    for i, test in enumerate(ab_tests):
        for role, name in (("control", test.control), ("treatment", test.treatment)):
            if name not in known:
                raise ConfigError(
                    f"A/B test {test.name!r}: {name!r} is not an expert; experts: {list(names)}",
                    key=f"ab_tests.{i}.{role}",
                )
