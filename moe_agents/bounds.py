"""Bounds of settings, stated once: ``annotated_types`` metadata on a frozen dataclass's fields.

::

    @dataclass(frozen=True, slots=True)
    class RetryPolicy:
        attempts: Annotated[int, Ge(1)] = 3
        jitter_s: Annotated[float, Ge(0.0)] = 0.5

        def __post_init__(self) -> None:
            check_bounds("retry", self)

``check_bounds`` enforces the bounds when the value is built in code (one ``ConfigError`` listing
every field out of range, through ``errors.check_settings``), and the YAML schema
(``moe_agents.config.spec``) derives its pydantic models from the same fields, whose bounds pydantic
reads, so a YAML value out of range is an error at its file, line and key.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from annotated_types import Ge, GroupedMetadata, Gt, Interval, Le, Lt, MinLen

from .errors import check_settings

__all__ = ["Ge", "Gt", "Interval", "Le", "Lt", "MinLen", "Unit", "bounds", "check_bounds"]

Unit = Interval(ge=0.0, le=1.0)
"""A share, a probability or a weight in [0, 1]: ``epsilon: Annotated[float, Unit] = 0.0``."""

Bound = Ge | Gt | Le | Lt | MinLen


@functools.cache
def bounds(cls: type) -> Mapping[str, tuple[Bound, ...]]:
    """The bounds of each field of the dataclass ``cls`` that has some."""
    return {name: found for name, (found, _) in _fields(cls).items()}


@functools.cache
def _fields(cls: type) -> Mapping[str, tuple[tuple[Bound, ...], bool]]:
    """Per bounded field: its bounds, and whether it may be ``None`` (``Annotated[float, Ge(0)] | None``)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out: dict[str, tuple[tuple[Bound, ...], bool]] = {}
    for f in dataclasses.fields(cls):
        found = tuple(_bounds(hints[f.name]))
        if found:
            nullable = type(None) in typing.get_args(hints[f.name])
            out[f.name] = (found, nullable)
    return out


def _bounds(hint: Any) -> Iterator[Bound]:
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            for m in meta if isinstance(meta, GroupedMetadata) else (meta,):
                if isinstance(m, Ge | Gt | Le | Lt | MinLen):
                    yield m
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            yield from _bounds(arg)


def _within(value: Any, bound: Bound) -> bool:
    try:
        if isinstance(bound, Ge):
            return bool(value >= bound.ge)
        if isinstance(bound, Gt):
            return bool(value > bound.gt)
        if isinstance(bound, Le):
            return bool(value <= bound.le)
        if isinstance(bound, Lt):
            return bool(value < bound.lt)
        return len(value) >= bound.min_length
    except TypeError:  # not a number
        return False


def check_bounds(what: str, settings: object, more: Mapping[str, bool] | None = None) -> None:
    """Raises one ``ConfigError`` listing every field of the dataclass value ``settings`` outside
    its bounds (``None`` passes where the field's type allows it), or whose
    check in ``more`` (conditions the bounds cannot state, e.g. ``max_s >= initial_s``) is ``False``.

    Args:
        what: the settings' name in the message (``"retry"`` → ``invalid retry settings``).
        settings: a dataclass value whose fields carry bounds.
        more: field name → whether its further condition holds.
    """
    checks = {
        name: (nullable and getattr(settings, name) is None)
        or all(_within(getattr(settings, name), b) for b in found)
        for name, (found, nullable) in _fields(type(settings)).items()  # type: ignore[arg-type]  # classes hash
    }
    for name, ok in (more or {}).items():
        checks[name] = checks.get(name, True) and ok
    check_settings(what, settings, checks)
