"""Durability of the trust store under ``kill -9``: a writer killed at any moment leaves a consistent
file that loses at most its in-flight write, and a killed ``record_many`` leaves all of its rows or
none."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from moe_agents.routing.trust import TrustStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

ROUNDS = 8
WATCHDOG_S = 60.0
"""A writer still alive after this long is killed, so a hung writer fails the test instead of hanging it."""

RECORD_LOOP = """
import sys
from moe_agents.routing.trust import TrustStore

store = TrustStore(sys.argv[1])
n = 0
while True:
    store.record(f"e{n % 7}", f"c{n % 5}", (n % 11) / 10, result_id=str(n + 1))
    n += 1
    print("ack", n, flush=True)
"""
"""Records scores until killed, acknowledging each one after ``record()`` returned (committed)."""

BATCH_WRITER = """
import sqlite3
import sys
import threading
from moe_agents.routing.trust import TrustStore

path, pause_at, base, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
armed, seen = False, 0


def hold_open(sql):
    # counts the statements the batch runs; at the pause_at-th one, says so and waits to be killed
    global seen
    if armed:
        seen += 1
        if seen == pause_at:
            print("paused", seen, sql.split()[0], flush=True)
            threading.Event().wait()


connect = sqlite3.connect


def traced(*args, **kwargs):
    conn = connect(*args, **kwargs)
    conn.set_trace_callback(hold_open)
    return conn


sqlite3.connect = traced
store = TrustStore(path)
store.record_many([(f"e{i % 50}", f"c{i % 20}", (i % 11) / 10) for i in range(base)], source="base")
armed = True
store.record_many([(f"e{i % 50}", f"c{i % 20}", (i % 7) / 6) for i in range(batch)], source="batch")
armed = False
print("committed", seen, flush=True)
threading.Event().wait()
"""
"""Commits ``base`` rows, then runs a ``batch``-row ``record_many`` that stops at its ``pause_at``-th
SQL statement (0: never) and waits there, inside the open transaction, to be killed."""

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Starts ``python -c script args...``; whatever is still running at teardown is killed."""
    procs: list[subprocess.Popen[str]] = []
    timers: list[threading.Timer] = []

    def start(script: str, *args: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", script, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        timer = threading.Timer(WATCHDOG_S, proc.kill)
        timer.start()
        timers.append(timer)
        return proc

    yield start
    for timer in timers:
        timer.cancel()
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _wait_for(proc: subprocess.Popen[str], done: Callable[[list[str]], bool]) -> list[str]:
    """Reads the writer's lines until ``done(line.split())`` holds; fails if the writer exits first."""
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if done(line.split()):
            return line.split()
    raise AssertionError(f"writer exited with {proc.wait()} before it got there:\n{proc.stderr.read()}")


def _kill(proc: subprocess.Popen[str]) -> list[list[str]]:
    """SIGKILLs the writer, waits for it, and returns the complete lines it wrote and we had not read."""
    assert proc.stdout is not None
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    return [line.split() for line in proc.stdout.read().splitlines(keepends=True) if line.endswith("\n")]


def _check_consistent(path: Path) -> int:
    """Asserts the file is intact and every pair's stats agree with its log; returns the log's size."""
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == (str(TrustStore.SCHEMA_VERSION),)
        stats = {
            (e, c): (s, w, n) for e, c, s, w, n in conn.execute("SELECT expert, context, s, w, n FROM stats")
        }
        logged: dict[tuple[str, str], list[float]] = {}
        for e, c, q in conn.execute("SELECT expert, context, score FROM feedback ORDER BY id"):
            logged.setdefault((e, c), []).append(q)
        decay = float(conn.execute("SELECT value FROM meta WHERE key = 'decay'").fetchone()[0])
    conn.close()
    assert stats.keys() == logged.keys()
    for pair, (s, w, n) in stats.items():
        scores = logged[pair]
        assert n == len(scores), pair
        s_log = w_log = 0.0
        for q in scores:
            s_log, w_log = decay * s_log + q, decay * w_log + 1.0
        assert math.isclose(s, s_log, rel_tol=1e-9) and math.isclose(w, w_log, rel_tol=1e-9), pair
    return sum(len(scores) for scores in logged.values())


class TestKilledWriter:
    @pytest.mark.parametrize("seed", range(ROUNDS), ids=[f"round-{i}" for i in range(ROUNDS)])
    def test_loses_at_most_the_in_flight_write(self, tmp_path: Path, spawn: Spawn, seed: int) -> None:
        """After kill -9 in a burst of records the file is intact, stats match the log, every
        acknowledged score is there plus at most the one in flight, and the store takes new writes."""
        path = tmp_path / "trust.sqlite3"
        target = random.Random(seed).randint(5, 400)
        writer = spawn(RECORD_LOOP, path)
        seen = _wait_for(writer, lambda words: words[:1] == ["ack"] and int(words[1]) >= target)
        acked = max([int(seen[1]), *(int(words[1]) for words in _kill(writer) if words[:1] == ["ack"])])

        with TrustStore(path) as store:
            rows = _check_consistent(path)
            assert acked <= rows <= acked + 1
            ids = [row["result_id"] for row in store.log()]
            assert ids == [str(i) for i in range(1, rows + 1)]  # no hole: only the last can be missing
            after = store.record("e0", "c0", 1.0)
        assert after.evidence == len([i for i in range(rows) if i % 7 == 0 and i % 5 == 0]) + 1
        assert _check_consistent(path) == rows + 1


class TestKilledBatch:
    BASE = 100
    ROWS = 50_000
    # the batch runs BEGIN, one upsert per row, one log append per row, COMMIT; by its last appends
    # SQLite has spilled uncommitted pages into the WAL (about 1 MB), which recovery must ignore
    STATEMENTS = 2 + 2 * ROWS

    @pytest.mark.parametrize(
        "pause_at",
        [1, 2, ROWS // 2, ROWS + 2, ROWS + ROWS // 2, STATEMENTS - 1, STATEMENTS],
        ids=["before-begin", "first-upsert", "mid-stats", "first-append", "mid-log", "last-append", "commit"],
    )
    def test_killed_inside_the_transaction_leaves_none_of_the_batch(
        self, tmp_path: Path, spawn: Spawn, pause_at: int
    ) -> None:
        """kill -9 at any statement of a 50,000-row record_many, up to its COMMIT, leaves only what
        was committed before it, consistent."""
        path = tmp_path / "trust.sqlite3"
        writer = spawn(BATCH_WRITER, path, pause_at, self.BASE, self.ROWS)
        words = _wait_for(writer, lambda words: words[:1] in (["paused"], ["committed"]))
        assert words[:2] == ["paused", str(pause_at)], "the batch committed before the kill point"
        _kill(writer)
        assert _check_consistent(path) == self.BASE
        with TrustStore(path) as store:
            assert {row["source"] for row in store.log()} == {"base"}

    def test_killed_after_the_commit_keeps_all_of_the_batch(self, tmp_path: Path, spawn: Spawn) -> None:
        """kill -9 once record_many returned keeps every row of the batch, consistent."""
        path = tmp_path / "trust.sqlite3"
        writer = spawn(BATCH_WRITER, path, 0, self.BASE, self.ROWS)
        words = _wait_for(writer, lambda words: words[:1] in (["paused"], ["committed"]))
        assert words == ["committed", str(self.STATEMENTS)]
        _kill(writer)
        assert _check_consistent(path) == self.BASE + self.ROWS
        with TrustStore(path) as store:
            stat = store.stats("e0", "c0")[0]
        assert stat.evidence == (self.BASE + self.ROWS) // 100  # i % 50 == 0 and i % 20 == 0
