"""What a ``Residency`` manages: a named model that loads and unloads, and its size in bytes."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["Model", "nbytes_of"]


class Model(Protocol):
    """What a ``Residency`` manages; ``TransformersBackend`` and ``FunctionBackend`` fit it.

    A model may also have ``nbytes`` (its size in bytes once loaded, 0 while unknown) and ``loaded``
    (whether it is in memory now); both are read when present.
    """

    name: str

    async def load(self) -> None:
        """Brings the weights into memory; idempotent."""
        ...

    async def unload(self) -> None:
        """Releases the memory ``load`` took; idempotent."""
        ...


def nbytes_of(model: Model) -> int:
    """The model's ``nbytes`` when it has an integer one, else 0 (unknown)."""
    value = getattr(model, "nbytes", None)
    return int(value) if isinstance(value, int | np.integer) else 0
