"""``MemoryStore``: the SQLite-backed store described in the package docstring (``moe_agents.memory``)."""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, InvalidInput, RunError, check_unit
from ..logging import get_logger
from ..routing.encoder import Encoder
from ..sqlite import Migration, SQLiteStore, transaction
from .values import CACHED_SESSIONS, Memory, MemoryConfig, ProvidedContext, Turn, count_tokens

__all__ = ["MemoryStore"]

log = get_logger(__name__)


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS turns ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, ts REAL NOT NULL,"
        " role TEXT NOT NULL, text TEXT NOT NULL, experts TEXT NOT NULL, result_id TEXT)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS turns_session ON turns (session, id)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS memories ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, session TEXT NOT NULL, ts REAL NOT NULL,"
        " turn_id INTEGER NOT NULL, result_id TEXT, encoder TEXT NOT NULL, text TEXT NOT NULL,"
        " embedding BLOB NOT NULL, surprise REAL NOT NULL, novelty REAL NOT NULL, reward REAL,"
        " conflict REAL NOT NULL, salience REAL NOT NULL)"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS memories_session ON memories (session)")
    conn.execute("CREATE INDEX IF NOT EXISTS memories_result ON memories (result_id)")


_TURN_COLUMNS = "id, role, text, experts, result_id, ts"
_MEMORY_COLUMNS = "id, ts, turn_id, text, embedding, novelty, surprise, reward, conflict, salience"


def _session(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"session must be a non-empty string, got {value!r}")
    return value


def _turn(row: tuple[int, str, str, str, str | None, float]) -> Turn:
    id_, role, text, experts, result_id, ts = row
    return Turn(int(id_), role, text, tuple(experts.split(",")) if experts else (), result_id, float(ts))


class MemoryStore(SQLiteStore):
    """Conversation memory of many sessions in one SQLite file, safe to share between threads.

    Args:
        config: the settings (``MemoryConfig()`` when ``None``).
        encoder: embeds exchanges and recall texts; needed by ``add_exchange``, ``recall`` and
            ``context_for`` only, so a store that just reads or forgets transcripts can do without.

    Raises:
        ConfigError: ``path`` is not a memory store (not SQLite, other tables, or a newer schema
            version than this code supports).
        RunError: SQLite failed otherwise (the file cannot be opened, stayed locked, ...).

    Operations on a closed store raise ``RunError``.
    """

    KIND: ClassVar[str] = "memory store"
    EVENT: ClassVar[str] = "memory"
    FILENAME: ClassVar[str] = "memory.sqlite3"
    PRAGMAS: ClassVar[tuple[str, ...]] = ("PRAGMA secure_delete = ON",)  # deleted text is zeroed
    SCHEMA_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[Mapping[int, Migration]] = MappingProxyType({0: _create_v1})
    """``{version: step}``: each step turns a file at ``version`` into ``version + 1``; version 0 is
    an empty file. Steps run in order, in one transaction, when an older file is opened."""

    path: str

    def __init__(self, config: MemoryConfig | None = None, *, encoder: Encoder | None = None) -> None:
        self.config = config or MemoryConfig()
        self.encoder = encoder
        total = sum(self.config.weights)
        self._weights = tuple(w / total for w in self.config.weights)
        self._buffers: OrderedDict[str, deque[Turn]] = OrderedDict()
        self._open(self.config.path)

    def _buffer(self, conn: sqlite3.Connection, session: str) -> deque[Turn]:
        """The session's recent buffer, loaded from the log on first use (call with the lock held)."""
        buffer = self._buffers.get(session)
        if buffer is not None:
            self._buffers.move_to_end(session)
            return buffer
        n = self.config.recent_turns
        rows = conn.execute(
            f"SELECT {_TURN_COLUMNS} FROM turns WHERE session = ? ORDER BY id DESC LIMIT ?", (session, n)
        ).fetchall()
        buffer = deque((_turn(row) for row in reversed(rows)), maxlen=n)
        self._buffers[session] = buffer
        if len(self._buffers) > CACHED_SESSIONS:
            self._buffers.popitem(last=False)
        return buffer

    def _embed(self, text: str) -> np.ndarray:
        if self.encoder is None:
            raise ConfigError("this memory store has no encoder: pass MemoryStore(..., encoder=...)")
        vectors = np.asarray(self.encoder.encode([text]), dtype=np.float32)  # (1, D)
        if vectors.ndim != 2 or vectors.shape[0] != 1:
            raise RunError(f"encoder {self.encoder.name} returned shape {vectors.shape} for one text")
        vector = vectors[0]  # (D,)
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def _salience(self, novelty: float, surprise: float, reward: float | None, conflict: float) -> float:
        wn, ws, wr, wc = self._weights
        return wn * novelty + ws * surprise + wr * (0.5 if reward is None else reward) + wc * conflict

    # -- writing -------------------------------------------------------------------------------

    def add_exchange(
        self,
        session: str,
        query: str,
        answer: str,
        *,
        experts: Sequence[str],
        result_id: str | None = None,
        confidence: float = 0.5,
        conflict: float = 0.0,
    ) -> None:
        """Logs a user turn and its answer, and remembers the exchange, in one transaction.

        Args:
            session: the conversation (``Query.session_id``).
            query: the user's message.
            answer: the answer given.
            experts: the experts that answered (names without commas).
            result_id: the pipeline result, so that ``record_feedback`` can find the exchange.
            confidence: the router's confidence in its choice, in [0, 1] (surprise is 1 minus it).
            conflict: whether (or how much, in [0, 1]) the answering experts disagreed.

        Raises:
            InvalidInput: an empty session, non-string texts, an expert name that is empty or has a
                comma, or confidence or conflict outside [0, 1].
            ConfigError: the store has no encoder.
            RunError: SQLite or the encoder failed; nothing is written.
        """
        session = _session(session)
        if not isinstance(query, str) or not isinstance(answer, str):
            raise InvalidInput("query and answer must be strings")
        names = tuple(experts)
        if any(not isinstance(e, str) or not e or "," in e for e in names):
            raise InvalidInput(f"expert names must be non-empty strings without commas, got {names!r}")
        if result_id is not None and not isinstance(result_id, str):
            raise InvalidInput(f"result_id must be a string, got {result_id!r}")
        surprise = 1.0 - check_unit(confidence, "confidence")
        conflict = check_unit(float(conflict) if isinstance(conflict, bool) else conflict, "conflict")
        vector = self._embed(f"{query}\n{answer}")  # outside the lock: encoders are slow
        assert self.encoder is not None
        encoder = self.encoder.name
        ts = time.time()
        joined = ",".join(names)
        with self._locked("add_exchange") as conn:
            with transaction(conn):
                earlier = [
                    np.frombuffer(blob, dtype="<f4")
                    for (blob,) in conn.execute(
                        "SELECT embedding FROM memories WHERE session = ? AND encoder = ?", (session, encoder)
                    )
                ]
                earlier = [e for e in earlier if e.shape == vector.shape]
                similarity = float(np.max(np.stack(earlier) @ vector)) if earlier else 0.0  # (M,) -> max
                novelty = min(1.0, max(0.0, 1.0 - similarity))
                turn_ids = [
                    conn.execute(
                        "INSERT INTO turns (session, ts, role, text, experts, result_id)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (session, ts, role, text, joined, result_id),
                    ).lastrowid
                    for role, text in (("user", query), ("assistant", answer))
                ]
                conn.execute(
                    "INSERT INTO memories (session, ts, turn_id, result_id, encoder, text, embedding,"
                    " surprise, novelty, reward, conflict, salience)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                    (
                        session,
                        ts,
                        turn_ids[0],
                        result_id,
                        encoder,
                        f"user: {query}\nassistant: {answer}",
                        vector.astype("<f4").tobytes(),
                        surprise,
                        novelty,
                        conflict,
                        self._salience(novelty, surprise, None, conflict),
                    ),
                )
            buffer = self._buffers.get(session)
            if buffer is not None:  # sessions not cached yet load these rows with the rest
                for turn_id, role, text in zip(turn_ids, ("user", "assistant"), (query, answer), strict=True):
                    assert turn_id is not None
                    buffer.append(Turn(turn_id, role, text, names, result_id, ts))
        log.debug("memory.added", session=session, novelty=round(novelty, 3), surprise=round(surprise, 3))

    def record_feedback(self, result_id: str, score: float) -> bool:
        """Sets the reward of the exchange of ``result_id`` to ``score`` and updates its salience.

        Returns:
            Whether an exchange with that result id was found.

        Raises:
            InvalidInput: ``score`` outside [0, 1] (or NaN), or an empty result id.
            RunError: SQLite failed.
        """
        if not isinstance(result_id, str) or not result_id:
            raise InvalidInput(f"result_id must be a non-empty string, got {result_id!r}")
        reward = check_unit(score, "score")
        wn, ws, wr, wc = self._weights
        with self._locked("record_feedback") as conn, transaction(conn):
            updated = conn.execute(
                "UPDATE memories SET reward = :reward,"
                " salience = :wn * novelty + :ws * surprise + :wr * :reward + :wc * conflict"
                " WHERE result_id = :result_id",
                {"reward": reward, "wn": wn, "ws": ws, "wr": wr, "wc": wc, "result_id": result_id},
            ).rowcount
        return updated > 0

    def forget(self, session: str) -> int:
        """Deletes a session's turns and memories from the file's bytes, and its recent buffer.

        After the delete, the WAL is checkpointed and truncated, the file is vacuumed and the WAL
        truncated again; if another connection holds a read snapshot the checkpoint cannot finish
        and the bytes may linger until it can (logged as ``memory.forget_incomplete``).

        Returns:
            How many rows (turns and memories) were removed.

        Raises:
            InvalidInput: an empty session.
            RunError: SQLite failed.
        """
        session = _session(session)
        with self._locked("forget") as conn:
            with transaction(conn):
                removed = conn.execute("DELETE FROM memories WHERE session = ?", (session,)).rowcount
                removed += conn.execute("DELETE FROM turns WHERE session = ?", (session,)).rowcount
            self._buffers.pop(session, None)
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            conn.execute("VACUUM")
            busy |= conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        if busy:
            log.warning("memory.forget_incomplete", path=self.path, session=session)
        log.info("memory.forgotten", path=self.path, session=session, removed=removed)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def recent(self, session: str) -> list[Turn]:
        """The session's recent buffer: its last ``recent_turns`` turns, oldest first."""
        session = _session(session)
        with self._locked("recent") as conn:
            return list(self._buffer(conn, session))

    def transcript(self, session: str) -> list[Turn]:
        """Every turn of the session, oldest first (empty for an unknown session)."""
        session = _session(session)
        with self._locked("transcript") as conn:
            rows = conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM turns WHERE session = ? ORDER BY id", (session,)
            ).fetchall()
        return [_turn(row) for row in rows]

    def sessions(self) -> list[tuple[str, int, float]]:
        """``(session, turns, last activity)`` of every session, the most recently active first."""
        with self._locked("sessions") as conn:
            rows = conn.execute(
                "SELECT session, COUNT(*), MAX(ts) FROM turns GROUP BY session ORDER BY MAX(ts) DESC, session"
            ).fetchall()
        return [(session, int(n), float(ts)) for session, n, ts in rows]

    def recall(
        self, session: str, text: str, k: int | None = None, *, vector: np.ndarray | None = None
    ) -> list[Memory]:
        """The session's memories most relevant to ``text``, best first.

        Memories are ranked by ``similarity * (0.5 + 0.5 * salience)``; those whose user turn is in
        the recent buffer, those made by another encoder, and those with no positive similarity or
        one below ``config.similarity_threshold`` are left out.

        Args:
            session: the conversation.
            text: what the memories should be relevant to (usually the new query).
            k: how many to return at most (``config.recall_k`` when ``None``).
            vector: ``text``'s embedding by this store's encoder, when the caller has it (the
                router's, with the same encoder), so that it is not encoded again.

        Raises:
            InvalidInput: an empty session, or a negative ``k``.
            ConfigError: the store has no encoder.
            RunError: SQLite or the encoder failed.
        """
        session = _session(session)
        k = self.config.recall_k if k is None else k
        if not isinstance(k, int) or k < 0:
            raise InvalidInput(f"k must be an integer >= 0, got {k!r}")
        if k == 0:
            return []
        if self.encoder is None:
            raise ConfigError("this memory store has no encoder: pass MemoryStore(..., encoder=...)")
        if vector is None:
            vector = self._embed(text)  # (D,)
        else:
            vector = np.asarray(vector, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            vector = vector / norm if norm > 0 else vector
        with self._locked("recall") as conn:
            recent_ids = {turn.id for turn in self._buffer(conn, session)}
            rows = conn.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE session = ? AND encoder = ? ORDER BY id",
                (session, self.encoder.name),
            ).fetchall()
        rows = [r for r in rows if r[2] not in recent_ids and len(r[4]) == vector.nbytes]
        if not rows:
            return []
        matrix = np.stack([np.frombuffer(r[4], dtype="<f4") for r in rows])  # (M, D)
        similarity = matrix @ vector  # (M,)
        salience = np.array([r[9] for r in rows], dtype=np.float64)  # (M,)
        score = similarity * (0.5 + 0.5 * salience)  # (M,)
        relevant = (similarity > 0) & (similarity >= self.config.similarity_threshold)  # (M,)
        best = [i for i in np.argsort(-score, kind="stable") if relevant[i]][:k]
        return [
            Memory(
                id=rows[i][0],
                session=session,
                text=rows[i][3],
                ts=rows[i][1],
                similarity=float(similarity[i]),
                salience=float(salience[i]),
                score=float(score[i]),
                novelty=rows[i][5],
                surprise=rows[i][6],
                reward=rows[i][7],
                conflict=rows[i][8],
            )
            for i in best
        ]

    def context_for(
        self,
        session: str,
        text: str,
        budget_tokens: int,
        *,
        counter: Callable[[str], int] = count_tokens,
        turns: Sequence[Turn] | None = None,
        vector: np.ndarray | None = None,
    ) -> ProvidedContext:
        """The context to give an expert for ``text``: recent turns, then relevant memories.

        Recent turns come first and the newest are kept when they do not all fit (a turn that does
        not fit stops the turns: the kept ones are always the last turns, unbroken); then the
        memories ``recall`` finds are added, best first, each one that still fits. The formatted
        text never counts more than ``budget_tokens``::

            Earlier in this conversation:
            user: ...
            assistant: ...

            Relevant memories:
            - user: ...
              assistant: ...

        Args:
            session: the conversation.
            text: the new query.
            budget_tokens: the most tokens the context may take (≥ 0).
            counter: counts the tokens of a text (``count_tokens`` by default).
            turns: the recent turns to give, oldest first (default: the whole recent buffer; a
                pipeline passes those that continue into ``text``, see ``moe_agents.continuity``).
            vector: ``text``'s embedding, passed on to ``recall``.

        Raises:
            InvalidInput: an empty session, or a negative budget.
            ConfigError: the store has no encoder.
            RunError: SQLite or the encoder failed.
        """
        if not isinstance(budget_tokens, int) or budget_tokens < 0:
            raise InvalidInput(f"budget_tokens must be an integer >= 0, got {budget_tokens!r}")
        turns = self.recent(session) if turns is None else list(turns)
        memories = self.recall(session, text, vector=vector)
        kept: list[Turn] = []
        for turn in reversed(turns):
            if counter(_render([turn, *kept], [])) > budget_tokens:
                break
            kept.insert(0, turn)
        chosen: list[Memory] = []
        for memory in memories:
            if counter(_render(kept, [*chosen, memory])) <= budget_tokens:
                chosen.append(memory)
        rendered = _render(kept, chosen)
        return ProvidedContext(rendered, tuple(kept), tuple(chosen), counter(rendered) if rendered else 0)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the connection (again is fine); the store cannot be used afterwards."""
        self._buffers.clear()
        super().close()

    def __repr__(self) -> str:
        return f"MemoryStore({self.path!r}, recent_turns={self.config.recent_turns})"


def _render(turns: Sequence[Turn], memories: Sequence[Memory]) -> str:
    parts = []
    if turns:
        parts.append("Earlier in this conversation:\n" + "\n".join(f"{t.role}: {t.text}" for t in turns))
    if memories:
        bullets = ("- " + m.text.replace("\n", "\n  ") for m in memories)
        parts.append("Relevant memories:\n" + "\n".join(bullets))
    return "\n\n".join(parts)
