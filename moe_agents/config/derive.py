"""YAML sections derived from the frozen dataclasses they configure.

A setting's name, type, default and bounds are stated once, on its dataclass field (bounds as
``annotated_types`` metadata, see ``moe_agents.bounds``); ``section`` turns the dataclass into a
pydantic model of its YAML section, so pydantic checks the same bounds with the file, line and key::

    class RetrySpec(section(RetryPolicy)):  # type: ignore[misc]
        \"\"\"``retry:`` of a backend.\"\"\"

A section that is not 1:1 with its dataclass (keys in other units, YAML-only keys) excludes those
fields and declares its own, taking their bounds from the dataclass with ``limits``.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..bounds import bounds

__all__ = ["Section", "build", "limits", "section"]

T = TypeVar("T")


class Section(BaseModel):
    """A YAML mapping: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def section(
    cls: type, *, exclude: Collection[str] = (), defaults: Mapping[str, Any] | None = None
) -> type[Section]:
    """A ``Section`` with the init fields of the dataclass ``cls`` (but ``exclude``): the same
    names, types with their bounds, and defaults (``defaults`` replaces some; a field without a
    default is a required key)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        if defaults is not None and f.name in defaults:
            default: Any = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (hints[f.name], default)
    return create_model(f"{cls.__name__}Section", __base__=Section, **fields)


def limits(cls: type, name: str) -> dict[str, Any]:
    """The bounds of the field ``name`` of the dataclass ``cls`` as ``Field`` keywords
    (``{"ge": 1}``), for a section key that restates the field (in other units, or optional)."""
    out: dict[str, Any] = {}
    for b in bounds(cls).get(name, ()):
        if isinstance(b, Ge):
            out["ge"] = b.ge
        elif isinstance(b, Gt):
            out["gt"] = b.gt
        elif isinstance(b, Le):
            out["le"] = b.le
        elif isinstance(b, Lt):
            out["lt"] = b.lt
        elif isinstance(b, MinLen):
            out["min_length"] = b.min_length
    return out


def build(cls: type[T], spec: BaseModel, **override: Any) -> T:
    """The dataclass ``cls`` from the keys of ``spec`` that are its fields (``override`` sets others)."""
    keys = type(spec).model_fields
    given = {f.name: getattr(spec, f.name) for f in dataclasses.fields(cls) if f.init and f.name in keys}  # type: ignore[arg-type]
    return cls(**{**given, **override})
