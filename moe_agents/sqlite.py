"""The base of moe-agents' SQLite files (the trust store, conversation memory).

One connection in WAL mode behind a lock (safe to share between threads; several processes may
open the same file), a ``meta`` table holding the schema version, and versioned migrations run in
one ``BEGIN IMMEDIATE`` transaction when an older file is opened. SQLite errors become
``RunError`` naming the file; a file that is not this kind of store is a ``ConfigError``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from .errors import ConfigError, RunError
from .logging import get_logger

__all__ = ["BUSY_TIMEOUT_S", "Migration", "SQLiteStore", "transaction"]

log = get_logger(__name__)

BUSY_TIMEOUT_S = 30.0
"""How long a write waits for another connection's lock before failing."""

Migration = Callable[[sqlite3.Connection], None]
"""One schema step: turns a file at version v into v + 1 (version 0 is an empty file)."""


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class SQLiteStore:
    """A versioned SQLite file; subclasses set the class attributes and call ``_open``.

    Attributes:
        KIND: what the store is, for messages (``"trust store"``).
        EVENT: prefix of its log events (``"trust"`` → ``trust.created``).
        FILENAME: its file name in the user data folder.
        SCHEMA_VERSION: the version this code writes.
        MIGRATIONS: ``{version: step}``; each step turns a file at ``version`` into ``version + 1``.
        PRAGMAS: extra ``PRAGMA`` statements run on every connection.
    """

    KIND: ClassVar[str]
    EVENT: ClassVar[str]
    FILENAME: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int]
    MIGRATIONS: ClassVar[Mapping[int, Migration]]
    PRAGMAS: ClassVar[tuple[str, ...]] = ()

    path: str

    @classmethod
    def default_path(cls) -> Path:
        """``$MOE_AGENTS_DATA_DIR/<FILENAME>``, else ``<FILENAME>`` in the user data folder."""
        if env := os.environ.get("MOE_AGENTS_DATA_DIR"):
            return Path(env).expanduser() / cls.FILENAME
        import platformdirs

        return Path(platformdirs.user_data_dir("moe-agents")) / cls.FILENAME

    def _open(self, path: str | Path | None) -> None:
        self.path = str(self.default_path() if path is None else path)
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _created_meta(self) -> Mapping[str, object]:
        """Informative ``meta`` rows written when the file is created (besides the version)."""
        return {"created_at": time.time()}

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RunError(f"{self.KIND} {self.path}: cannot create its folder: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise RunError(f"{self.KIND} {self.path}: cannot open: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self._version(conn) != self.SCHEMA_VERSION:
                self._migrate(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            for pragma in self.PRAGMAS:
                conn.execute(pragma)
        except ConfigError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise ConfigError(f"not a {self.KIND}: {exc}", path=self.path) from exc
            raise RunError(f"{self.KIND} {self.path}: cannot open: {exc}") from exc
        return conn

    def _version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version (0: an empty file)."""
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return 0
        if "meta" not in tables:
            raise ConfigError(f"not a {self.KIND}: a SQLite file with other tables", path=self.path)
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise ConfigError(
                f"not a {self.KIND}: no schema_version in its meta table", path=self.path
            ) from None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with transaction(conn):
            start = version = self._version(conn)  # again: another process may have migrated it meanwhile
            if version > self.SCHEMA_VERSION:
                raise ConfigError(
                    f"schema version {version} is newer than this moe-agents supports "
                    f"({self.SCHEMA_VERSION}); upgrade moe-agents",
                    path=self.path,
                )
            while version < self.SCHEMA_VERSION:
                step = self.MIGRATIONS.get(version)
                if step is None:
                    raise ConfigError(f"no migration from schema version {version}", path=self.path)
                step(conn)
                version += 1
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(version),),
                )
            if start == 0:
                conn.executemany(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    [(k, repr(v)) for k, v in self._created_meta().items()],
                )
        if start == 0:
            log.info(f"{self.EVENT}.created", path=self.path, schema_version=version)
        elif start != version:
            log.info(f"{self.EVENT}.migrated", path=self.path, from_version=start, to_version=version)

    @contextmanager
    def _locked(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread; SQLite errors become ``RunError`` naming the file."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise RunError(f"{self.KIND} {self.path}: {what} failed: {exc}") from exc

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """The connection in one write transaction (see ``transaction``)."""
        with self._locked(what) as conn, transaction(conn):
            yield conn

    def close(self) -> None:
        """Closes the connection (again is fine); the store cannot be used afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
