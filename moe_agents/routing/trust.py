"""The persistent trust store: how well each expert did in each context, learned from feedback.

Trust in an (expert, context) pair is an exponentially decayed mean of the scores it received,
pulled towards a prior, never the last score alone. Per pair the store keeps the decayed sum of
scores ``s``, the decayed weight ``w`` and the evidence count ``n``; on a score ``q`` in [0, 1]::

    s = decay * s + q        w = decay * w + 1        n = n + 1
    trust = (s + prior * prior_weight) / (w + prior_weight)

so ``decay = 1`` gives the plain mean with the prior, and a pair without feedback has the prior.

The store is one SQLite file (WAL mode) with three tables: ``meta`` (the schema version, and the
settings the file was created with, for information), ``stats`` (``s``, ``w``, ``n`` per pair) and
``feedback`` (the append-only log of every score). Each score updates ``stats`` in SQL and appends
to ``feedback`` in one ``BEGIN IMMEDIATE`` transaction, so concurrent writers (threads sharing a
store, or processes sharing the file) never lose an update. Nothing but these fields is stored.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, ClassVar, Literal

import numpy as np

from ..errors import InvalidInput, RunError, check_settings, check_unit
from ..logging import get_logger
from ..sqlite import Migration, SQLiteStore

__all__ = ["POOLED", "Migration", "TrustStat", "TrustStore"]

log = get_logger(__name__)

LOG_FIELDS = ("id", "ts", "expert", "context", "score", "source", "result_id")


@dataclass(frozen=True, slots=True)
class TrustStat:
    """Trust in one expert for one context.

    Attributes:
        expert: the expert's name.
        context: the context (a label, a domain, a task kind) the trust holds for.
        trust: the decayed mean of the scores with the prior, in [0, 1].
        evidence: how many scores were recorded.
        weight: the decayed weight of those scores (``evidence`` when ``decay`` is 1).
        updated_at: when the last score was recorded (unix seconds).
    """

    expert: str
    context: str
    trust: float
    evidence: int
    weight: float
    updated_at: float


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS stats ("
        " expert TEXT NOT NULL, context TEXT NOT NULL,"
        " s REAL NOT NULL, w REAL NOT NULL, n INTEGER NOT NULL, updated_at REAL NOT NULL,"
        " PRIMARY KEY (expert, context))"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS feedback ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
        " expert TEXT NOT NULL, context TEXT NOT NULL, score REAL NOT NULL,"
        " source TEXT NOT NULL, result_id TEXT)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS feedback_pair ON feedback (expert, context)")


_UPSERT = (
    "INSERT INTO stats (expert, context, s, w, n, updated_at) VALUES (:expert, :context, :score, 1.0, 1, :ts)"
    " ON CONFLICT (expert, context) DO UPDATE SET"
    " s = :decay * s + excluded.s, w = :decay * w + 1.0, n = n + 1, updated_at = excluded.updated_at"
)
POOLED = "*"
"""Names the pooled level of ``lookup``: every context of an expert together."""

_APPEND = (
    "INSERT INTO feedback (ts, expert, context, score, source, result_id)"
    " VALUES (:ts, :expert, :context, :score, :source, :result_id)"
)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}")
    return value


def _where(expert: str | None, context: str | None) -> tuple[str, list[str]]:
    clauses, params = [], []
    for column, value in (("expert", expert), ("context", context)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class TrustStore(SQLiteStore):
    """Per-expert, per-context trust persisted in SQLite, safe for concurrent writers.

    Args:
        path: the SQLite file (created with its parent folders when missing); ``":memory:"`` for
            a store that lives as long as this object; ``None`` for ``default_path()``.
        decay: how much the past weighs at each new score, in (0, 1]; 1 keeps the plain mean.
        prior: the trust of a pair without feedback, in [0, 1].
        prior_weight: how many scores' worth the prior counts for (≥ 0).

    Raises:
        ConfigError: invalid settings, or ``path`` is not a trust store (not SQLite, other
            tables, or a newer schema version than this code supports).
        RunError: SQLite failed otherwise (the file cannot be opened, stayed locked, ...).

    One connection serves every thread (behind a lock); other processes may open the same file.
    Operations on a closed store raise ``RunError``.
    """

    KIND: ClassVar[str] = "trust store"
    EVENT: ClassVar[str] = "trust"
    FILENAME: ClassVar[str] = "trust.sqlite3"
    SCHEMA_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[Mapping[int, Migration]] = MappingProxyType({0: _create_v1})
    """``{version: step}``: each step turns a file at ``version`` into ``version + 1``; version 0 is
    an empty file. Steps run in order, in one transaction, when a file older than
    ``SCHEMA_VERSION`` is opened."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        decay: float = 0.98,
        prior: float = 0.5,
        prior_weight: float = 1.0,
    ) -> None:
        self.decay, self.prior, self.prior_weight = decay, prior, prior_weight  # as given, for the message
        checks = {  # NaN fails every check
            "decay": 0.0 < decay <= 1.0,
            "prior": 0.0 <= prior <= 1.0,
            "prior_weight": prior_weight >= 0.0,
        }
        check_settings("trust", self, checks)
        self.decay = float(decay)
        self.prior = float(prior)
        self.prior_weight = float(prior_weight)
        self._open(path)

    def _created_meta(self) -> Mapping[str, object]:
        return {
            "decay": self.decay,
            "prior": self.prior,
            "prior_weight": self.prior_weight,
            "created_at": time.time(),
        }

    def _trust(self, s: Any, w: Any) -> Any:
        return (s + self.prior * self.prior_weight) / (w + self.prior_weight)

    def _stat(self, row: tuple[str, str, float, float, int, float]) -> TrustStat:
        expert, context, s, w, n, updated_at = row
        return TrustStat(expert, context, float(self._trust(s, w)), int(n), float(w), float(updated_at))

    def record(
        self,
        expert: str,
        context: str,
        score: float,
        *,
        source: str = "feedback",
        result_id: str | None = None,
    ) -> TrustStat:
        """Records one score for ``expert`` in ``context`` and returns the pair's new trust.

        Args:
            expert: the expert's name.
            context: the context the score is about.
            score: how well the expert did, in [0, 1].
            source: where the score comes from (``feedback``, ``eval``, ``judge``, ...).
            result_id: the result the score is about, when there is one.

        Raises:
            InvalidInput: an empty name, or a score outside [0, 1] (or NaN).
            RunError: SQLite failed.
        """
        row = self._row(expert, context, score, source, result_id, time.time())
        with self._write("record") as conn:
            conn.execute(_UPSERT, row)
            conn.execute(_APPEND, row)
            stat = conn.execute(
                "SELECT expert, context, s, w, n, updated_at FROM stats WHERE expert = ? AND context = ?",
                (expert, context),
            ).fetchone()
        return self._stat(stat)

    def record_many(
        self,
        rows: Iterable[tuple[str, str, float] | tuple[str, str, float, str]],
        *,
        source: str = "feedback",
    ) -> None:
        """Records ``(expert, context, score)`` rows (or ``(expert, context, score, source)``, which
        override ``source``) in order, in one transaction (all or none).

        Raises:
            InvalidInput: a row has an empty name or a score outside [0, 1]; nothing is recorded.
            RunError: SQLite failed; nothing is recorded.
        """
        ts = time.time()
        params = [
            self._row(row[0], row[1], row[2], row[3] if len(row) > 3 else source, None, ts)  # type: ignore[misc]
            for row in rows
        ]
        if not params:
            return
        with self._write("record_many") as conn:
            conn.executemany(_UPSERT, params)
            conn.executemany(_APPEND, params)

    def _row(
        self, expert: str, context: str, score: float, source: str, result_id: str | None, ts: float
    ) -> dict[str, Any]:
        if context == POOLED:
            raise InvalidInput(f"context {POOLED!r} is reserved for the pooled level of lookup()")
        if result_id is not None and not isinstance(result_id, str):
            raise InvalidInput(f"result_id must be a string, got {result_id!r}")
        return {
            "expert": _name(expert, "expert"),
            "context": _name(context, "context"),
            "score": check_unit(score, "score"),
            "source": _name(source, "source"),
            "result_id": result_id,
            "ts": ts,
            "decay": self.decay,
        }

    def reset(self, expert: str | None = None, context: str | None = None) -> int:
        """Forgets the pairs matching ``expert`` and ``context`` (``None`` matches any), and their log.

        Returns:
            How many (expert, context) pairs were removed.
        """
        where, params = _where(expert, context)
        with self._write("reset") as conn:
            conn.execute(f"DELETE FROM feedback{where}", params)
            removed = conn.execute(f"DELETE FROM stats{where}", params).rowcount
        log.info("trust.reset", path=self.path, expert=expert, context=context, removed=removed)
        return removed

    def lookup(
        self, experts: Sequence[str], context: str, *, backoff: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Trust and evidence of each expert in ``context``.

        With ``backoff=n``, when fewer than two experts have ``n`` observations in ``context``, each
        expert's statistics pooled over all its contexts are returned instead (``context="*"``
        asks for them directly): trust learned elsewhere beats no trust while a context is new.

        Returns:
            ``(trust, evidence)``: float64 and int64 arrays of shape ``(E,)``; an expert without
            feedback in this context has ``(prior, 0)``.
        """
        trust, evidence = self._lookup(experts, context)
        if backoff is not None and context != POOLED and int((evidence >= backoff).sum()) < 2:
            return self._lookup(experts, POOLED)
        return trust, evidence

    def _lookup(self, experts: Sequence[str], context: str) -> tuple[np.ndarray, np.ndarray]:
        trust = np.full(len(experts), self.prior, dtype=np.float64)  # (E,)
        evidence = np.zeros(len(experts), dtype=np.int64)  # (E,)
        with self._locked("lookup") as conn:
            if context == POOLED:
                sql = "SELECT expert, SUM(s), SUM(w), SUM(n) FROM stats GROUP BY expert"
                rows = conn.execute(sql)
            else:
                rows = conn.execute("SELECT expert, s, w, n FROM stats WHERE context = ?", (context,))
            found = {e: (s, w, n) for e, s, w, n in rows}
        for i, name in enumerate(experts):
            if name in found:
                s, w, n = found[name]
                trust[i] = self._trust(s, w)
                evidence[i] = n
        return trust, evidence

    def profiles(self, experts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Each expert's trust in every context the store has seen (the prior where it has no data).

        Returns:
            ``(matrix, contexts)``: a float64 ``(E, C)`` matrix and the C context names, sorted.
        """
        with self._locked("profiles") as conn:
            contexts = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT context FROM stats WHERE context != ? ORDER BY context", (POOLED,)
                )
            ]
            rows = conn.execute(
                "SELECT expert, context, s, w FROM stats WHERE context != ?", (POOLED,)
            ).fetchall()
        row_of = {name: i for i, name in enumerate(experts)}
        col_of = {name: j for j, name in enumerate(contexts)}
        matrix = np.full((len(experts), len(contexts)), self.prior, dtype=np.float64)  # (E, C)
        for expert, context, s, w in rows:
            if expert in row_of:
                matrix[row_of[expert], col_of[context]] = self._trust(s, w)
        return matrix, contexts

    def stats(self, expert: str | None = None, context: str | None = None) -> list[TrustStat]:
        """The pairs matching ``expert`` and ``context`` (``None`` matches any), by expert and context."""
        where, params = _where(expert, context)
        with self._locked("stats") as conn:
            rows = conn.execute(
                f"SELECT expert, context, s, w, n, updated_at FROM stats{where} ORDER BY expert, context",
                params,
            ).fetchall()
        return [self._stat(row) for row in rows]

    def log(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The feedback log, oldest first: the last ``limit`` rows, or every row when ``None``.

        Each row has ``id``, ``ts``, ``expert``, ``context``, ``score``, ``source``, ``result_id``.
        """
        if limit is not None and limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        sql = f"SELECT {', '.join(LOG_FIELDS)} FROM feedback ORDER BY id DESC"
        with self._locked("log") as conn:
            rows = conn.execute(sql + " LIMIT ?", (limit,)) if limit is not None else conn.execute(sql)
            found = [dict(zip(LOG_FIELDS, row, strict=True)) for row in rows]
        found.reverse()
        return found

    def export(
        self,
        out: IO[str] | Path,
        *,
        fmt: Literal["jsonl", "csv"] = "jsonl",
        what: Literal["stats", "log"] = "stats",
    ) -> int:
        """Writes the stats (``TrustStat`` fields) or the feedback log as JSON Lines or CSV.

        Args:
            out: an open text stream, or a file to (over)write.
            fmt: ``jsonl`` (one object a line) or ``csv`` (with a header row).
            what: ``stats`` (one row per pair) or ``log`` (one row per recorded score).

        Returns:
            How many rows were written (not counting the CSV header).
        """
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"fmt must be 'jsonl' or 'csv', got {fmt!r}")
        if what not in ("stats", "log"):
            raise InvalidInput(f"what must be 'stats' or 'log', got {what!r}")
        if what == "stats":
            columns = [f.name for f in fields(TrustStat)]
            rows = [asdict(stat) for stat in self.stats()]
        else:
            columns, rows = list(LOG_FIELDS), self.log()
        if not isinstance(out, Path):
            _write_rows(out, rows, columns, fmt)
            return len(rows)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("w", encoding="utf-8", newline="") as fh:
                _write_rows(fh, rows, columns, fmt)
        except OSError as exc:
            raise RunError(f"trust store {self.path}: cannot export to {out}: {exc}") from exc
        return len(rows)

    def __repr__(self) -> str:
        return (
            f"TrustStore({self.path!r}, decay={self.decay}, prior={self.prior}, "
            f"prior_weight={self.prior_weight})"
        )


def _write_rows(out: IO[str], rows: list[dict[str, Any]], columns: list[str], fmt: str) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
