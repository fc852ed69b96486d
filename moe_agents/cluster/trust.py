"""One trust store for the cluster: a named Ray actor owns the SQLite ``TrustStore``; every
process (each ingress replica, each pipeline) talks to it through ``SharedTrust``.

``SharedTrust`` has the ``TrustStore`` methods the router and the pipeline use (``record``,
``record_many``, ``lookup``, ``profiles``, ``stats``). Scores are batched: ``record`` buffers,
and the buffer is written as one transaction when it holds ``batch`` rows, when ``flush_s`` has
passed, before every read (a process reads its own writes) and on ``close``. The actor restarts
if it dies; a batch is one SQLite transaction, so a writer killed mid-batch loses at most that
batch, never part of one and never an earlier one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..routing.trust import TrustStat, TrustStore
from .runtime import connect
from .settings import RayConfig

__all__ = ["SharedTrust", "TrustKeeper"]


class TrustKeeper:
    """The actor's body: the one ``TrustStore`` of the cluster (``path`` on the actor's node)."""

    def __init__(self, path: str, options: dict[str, Any]) -> None:
        self.store = TrustStore(path, **options)

    def record_many(self, rows: list[tuple[str, str, float, str]]) -> int:
        """Writes one batch of ``(expert, context, score, source)`` rows as one transaction."""
        self.store.record_many(rows)
        return len(rows)

    def lookup(self, experts: list[str], context: str, backoff: int | None) -> tuple[np.ndarray, np.ndarray]:
        return self.store.lookup(experts, context, backoff=backoff)

    def profiles(self, experts: list[str]) -> tuple[np.ndarray, list[str]]:
        return self.store.profiles(experts)

    def stats(self, expert: str | None, context: str | None) -> list[TrustStat]:
        return self.store.stats(expert, context)

    def count(self) -> int:
        """Scores recorded (rows of the feedback log)."""
        return len(self.store.log())


class SharedTrust:
    """The cluster's trust store, through its actor (see the module docstring).

    Args:
        path: the SQLite file, on the node the actor runs on.
        ray: where the cluster is.
        name: the actor's name; every ``SharedTrust`` with this name shares one store.
        batch: rows buffered before a write.
        flush_s: longest a buffered row waits.
        options: ``TrustStore`` settings (``decay``, ``prior``, ``prior_weight``) for the actor's
            first start.
    """

    def __init__(
        self,
        path: str,
        ray: RayConfig,
        *,
        name: str = "moe-agents-trust",
        batch: int = 64,
        flush_s: float = 0.5,
        **options: Any,
    ) -> None:
        import ray as ray_

        connect(ray)
        keeper = ray_.remote(TrustKeeper).options(  # type: ignore[attr-defined]
            name=name, get_if_exists=True, lifetime="detached", max_restarts=-1, max_task_retries=-1
        )
        self.actor: Any = keeper.remote(path, options)
        self.path, self.batch, self.flush_s = path, batch, flush_s
        self._buffer: list[tuple[str, str, float, str]] = []
        self._since: float | None = None
        self._lock = threading.Lock()

    def record(
        self,
        expert: str,
        context: str,
        score: float,
        *,
        source: str = "feedback",
        result_id: str | None = None,
    ) -> None:
        """Buffers one score (written with the next batch)."""
        self.record_many([(expert, context, score)], source=source)

    def record_many(self, rows: Iterable[tuple[str, str, float]], *, source: str = "feedback") -> None:
        """Buffers ``(expert, context, score)`` rows; writes the batch when it is full or old."""
        with self._lock:
            self._buffer.extend((e, c, float(s), source) for e, c, s in rows)
            self._since = self._since or time.monotonic()
            due = len(self._buffer) >= self.batch or time.monotonic() - self._since >= self.flush_s
        if due:
            self.flush()

    def flush(self) -> int:
        """Writes the buffered rows as one transaction; returns how many."""
        import ray as ray_

        with self._lock:
            rows, self._buffer, self._since = self._buffer, [], None
        if not rows:
            return 0
        return int(ray_.get(self.actor.record_many.remote(rows)))

    def lookup(
        self, experts: Sequence[str], context: str, *, backoff: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import ray as ray_

        self.flush()
        return ray_.get(self.actor.lookup.remote(list(experts), context, backoff))

    def profiles(self, experts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        import ray as ray_

        self.flush()
        return ray_.get(self.actor.profiles.remote(list(experts)))

    def stats(self, expert: str | None = None, context: str | None = None) -> list[TrustStat]:
        import ray as ray_

        self.flush()
        return ray_.get(self.actor.stats.remote(expert, context))

    def close(self) -> None:
        """Writes what is buffered."""
        self.flush()

    def __enter__(self) -> SharedTrust:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
