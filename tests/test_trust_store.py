"""The persistent trust store: decayed means with a prior in SQLite, versioning, concurrent writers,
export, and the ``moe-agents trust`` commands."""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import pytest
from typer.testing import CliRunner

from moe_agents.cli import app
from moe_agents.errors import ConfigError, InvalidInput, RunError
from moe_agents.routing.trust import TrustStat, TrustStore

runner = CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "trust.sqlite3"


@pytest.fixture
def store(db: Path) -> Iterator[TrustStore]:
    with TrustStore(db) as s:
        yield s


def _meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    return rows


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"decay": 0.0},
            {"decay": 1.5},
            {"decay": math.nan},
            {"prior": -0.1},
            {"prior": 1.1},
            {"prior_weight": -1.0},
        ],
        ids=["decay-0", "decay-above-1", "decay-nan", "prior-negative", "prior-above-1", "weight-negative"],
    )
    def test_invalid_settings_raise_config_error(self, db: Path, kwargs: dict[str, float]) -> None:
        """Decay outside (0, 1], prior outside [0, 1] or a negative prior weight is a ConfigError."""
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            TrustStore(db, **kwargs)
        assert not db.exists()

    def test_default_path_follows_the_data_dir_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a path the store lives in $MOE_AGENTS_DATA_DIR/trust.sqlite3."""
        monkeypatch.setenv("MOE_AGENTS_DATA_DIR", str(tmp_path / "data"))
        assert TrustStore.default_path() == tmp_path / "data" / "trust.sqlite3"
        with TrustStore() as store:
            store.record("coding", "python", 1.0)
            assert store.path == str(tmp_path / "data" / "trust.sqlite3")
        assert (tmp_path / "data" / "trust.sqlite3").is_file()

    def test_default_path_without_the_variable_is_the_user_data_dir(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without $MOE_AGENTS_DATA_DIR the default is platformdirs' user data folder."""
        import platformdirs

        monkeypatch.delenv("MOE_AGENTS_DATA_DIR")
        assert TrustStore.default_path() == Path(platformdirs.user_data_dir("moe-agents")) / "trust.sqlite3"

    def test_parent_folders_are_created(self, tmp_path: Path) -> None:
        """A path in folders that do not exist yet is created."""
        path = tmp_path / "a" / "b" / "trust.sqlite3"
        with TrustStore(path) as store:
            store.record("coding", "python", 0.5)
        assert path.is_file()


class TestArithmetic:
    def test_unknown_pairs_have_the_prior_and_no_evidence(self, db: Path) -> None:
        """An expert without feedback in a context has (prior, 0), whatever other pairs hold."""
        with TrustStore(db, prior=0.3) as store:
            store.record("coding", "math", 1.0)
            trust, evidence = store.lookup(["coding", "reasoning"], "python")
        assert trust.tolist() == [0.3, 0.3]
        assert evidence.tolist() == [0, 0]
        assert trust.dtype == np.float64 and evidence.dtype == np.int64

    def test_decayed_mean_matches_hand_computation(self, db: Path) -> None:
        """Scores 1, 0, 1 with decay 0.5 give s = 1.25, w = 1.75 and trust (1.25 + 0.5) / 2.75."""
        with TrustStore(db, decay=0.5, prior=0.5, prior_weight=1.0) as store:
            first = store.record("coding", "python", 1.0)
            second = store.record("coding", "python", 0.0)
            third = store.record("coding", "python", 1.0)
            trust, evidence = store.lookup(["coding"], "python")
        assert first.trust == pytest.approx(1.5 / 2.0)  # (1 + 0.5) / (1 + 1)
        assert second.trust == pytest.approx(1.0 / 2.5)  # (0.5 + 0.5) / (1.5 + 1)
        assert third.trust == pytest.approx(1.75 / 2.75)
        assert third.weight == pytest.approx(1.75)
        assert third.evidence == 3
        assert trust[0] == pytest.approx(7 / 11) and evidence[0] == 3

    def test_trust_is_never_the_last_sample_alone(self, store: TrustStore) -> None:
        """Nine good scores and then a bad one leave trust high, not at zero."""
        for _ in range(9):
            store.record("coding", "python", 1.0)
        last = store.record("coding", "python", 0.0)
        assert 0.7 < last.trust < 0.95

    def test_decay_one_is_the_mean_with_the_prior(self, db: Path) -> None:
        """With decay 1 trust is (sum + prior * prior_weight) / (n + prior_weight)."""
        scores = [0.2, 0.9, 0.4, 1.0, 0.75]
        with TrustStore(db, decay=1.0, prior=0.5, prior_weight=2.0) as store:
            for q in scores:
                stat = store.record("reasoning", "logic", q)
        assert stat.trust == pytest.approx((sum(scores) + 1.0) / (len(scores) + 2.0))
        assert stat.weight == pytest.approx(len(scores))

    def test_zero_prior_weight_and_no_decay_is_the_plain_mean(self, db: Path) -> None:
        """With decay 1 and prior_weight 0 trust is the plain mean of the scores."""
        scores = [0.1, 0.3, 0.8]
        with TrustStore(db, decay=1.0, prior_weight=0.0) as store:
            store.record_many([("coding", "python", q) for q in scores])
            trust, _ = store.lookup(["coding"], "python")
        assert trust[0] == pytest.approx(np.mean(scores))

    def test_evidence_is_counted_per_expert_and_context(self, store: TrustStore) -> None:
        """Each (expert, context) pair counts its own scores."""
        for expert, context, times in (
            ("coding", "python", 3),
            ("coding", "math", 1),
            ("reasoning", "python", 2),
        ):
            for _ in range(times):
                store.record(expert, context, 0.5)
        _, python = store.lookup(["coding", "reasoning"], "python")
        _, math_ = store.lookup(["coding", "reasoning"], "math")
        assert python.tolist() == [3, 2]
        assert math_.tolist() == [1, 0]

    @pytest.mark.parametrize(
        "score",
        [-0.01, 1.01, math.nan, math.inf, "good", None],
        ids=["negative", "above-1", "nan", "inf", "text", "none"],
    )
    def test_invalid_scores_raise_invalid_input_and_record_nothing(
        self, store: TrustStore, score: Any
    ) -> None:
        """A score outside [0, 1], NaN or not a number is InvalidInput, and nothing is stored."""
        with pytest.raises(InvalidInput):
            store.record("coding", "python", score)
        with pytest.raises(InvalidInput):
            store.record_many([("coding", "python", 0.5), ("coding", "python", score)])
        assert store.stats() == [] and store.log() == []

    @pytest.mark.parametrize(
        ("expert", "context"),
        [("", "python"), ("coding", ""), (None, "python")],
        ids=["expert", "context", "none"],
    )
    def test_empty_names_raise_invalid_input(self, store: TrustStore, expert: Any, context: Any) -> None:
        """Expert and context must be non-empty strings."""
        with pytest.raises(InvalidInput, match="non-empty string"):
            store.record(expert, context, 0.5)

    def test_record_many_equals_one_record_at_a_time(self, tmp_path: Path) -> None:
        """A batch gives the same trust, evidence and weight as recording its rows one by one."""
        rows = [("coding", "python", 1.0), ("reasoning", "math", 0.2), ("coding", "python", 0.4)] * 5
        with TrustStore(tmp_path / "one.sqlite3") as one, TrustStore(tmp_path / "many.sqlite3") as many:
            for row in rows:
                one.record(*row, source="eval")
            many.record_many(rows, source="eval")
            singles, batch = one.stats(), many.stats()
            assert len(many.log()) == len(rows) and {r["source"] for r in many.log()} == {"eval"}
        assert [(s.expert, s.context, s.evidence) for s in batch] == [
            (s.expert, s.context, s.evidence) for s in singles
        ]
        assert [s.trust for s in batch] == pytest.approx([s.trust for s in singles])
        assert [s.weight for s in batch] == pytest.approx([s.weight for s in singles])


class TestPersistence:
    def test_values_survive_close_and_reopen(self, db: Path) -> None:
        """Stats and the log read back the same after the store is closed and opened again."""
        with TrustStore(db, decay=0.9) as store:
            store.record("coding", "python", 0.9, result_id="r-1")
            store.record("coding", "python", 0.1)
            before = store.stats()
        with TrustStore(db, decay=0.9) as store:
            assert store.stats() == before
            assert [r["result_id"] for r in store.log()] == ["r-1", None]
            after = store.record("coding", "python", 1.0)
        assert after.evidence == 3

    def test_memory_store_works_and_is_private(self) -> None:
        """``:memory:`` stores keep data for their own lifetime and share nothing."""
        with TrustStore(":memory:") as a, TrustStore(":memory:") as b:
            a.record("coding", "python", 1.0)
            assert a.lookup(["coding"], "python")[1].tolist() == [1]
            assert b.stats() == []
            assert a.path == ":memory:"

    def test_closed_store_raises_run_error_naming_the_path(self, db: Path) -> None:
        """Using a store after ``close`` (or its ``with`` block) is a RunError with the path."""
        with TrustStore(db) as store:
            store.record("coding", "python", 1.0)
        store.close()  # closing twice is fine
        with pytest.raises(RunError, match=str(db)):
            store.stats()

    def test_repr_names_path_and_settings(self, db: Path) -> None:
        """The repr shows where the store is and how it averages."""
        with TrustStore(db, decay=0.9, prior=0.4) as store:
            assert repr(store) == f"TrustStore({str(db)!r}, decay=0.9, prior=0.4, prior_weight=1.0)"


@pytest.fixture
def filled(store: TrustStore) -> TrustStore:
    """coding: python ×2 (1.0, 0.5), math ×1 (0.0); reasoning: math ×3 (1.0); knowledge: history ×1."""
    store.record("coding", "python", 1.0, result_id="r1")
    store.record("coding", "python", 0.5, source="judge")
    store.record("coding", "math", 0.0)
    store.record_many([("reasoning", "math", 1.0)] * 3)
    store.record("knowledge", "history", 0.75)
    return store


class TestQueries:
    def test_profiles_cover_every_context_seen(self, filled: TrustStore) -> None:
        """The profile matrix has a column per context (sorted) and the prior where a pair has no data."""
        matrix, contexts = filled.profiles(["reasoning", "coding", "omni"])
        assert contexts == ["history", "math", "python"]
        assert matrix.shape == (3, 3) and matrix.dtype == np.float64
        coding_python = filled.lookup(["coding"], "python")[0][0]
        reasoning_math = filled.lookup(["reasoning"], "math")[0][0]
        expected = [
            [0.5, reasoning_math, 0.5],
            [0.5, filled.lookup(["coding"], "math")[0][0], coding_python],
            [0.5, 0.5, 0.5],
        ]
        np.testing.assert_allclose(matrix, expected)

    def test_stats_filter_and_sort_by_expert_then_context(self, filled: TrustStore) -> None:
        """``stats`` filters by expert and/or context and sorts by expert, then context."""
        assert [(s.expert, s.context) for s in filled.stats()] == [
            ("coding", "math"),
            ("coding", "python"),
            ("knowledge", "history"),
            ("reasoning", "math"),
        ]
        assert [s.context for s in filled.stats(expert="coding")] == ["math", "python"]
        assert [s.expert for s in filled.stats(context="math")] == ["coding", "reasoning"]
        only = filled.stats("reasoning", "math")
        assert len(only) == 1 and only[0].evidence == 3 and isinstance(only[0], TrustStat)

    def test_log_keeps_every_score_with_its_source(self, filled: TrustStore) -> None:
        """The log holds one row per score, oldest first; ``limit`` keeps the newest rows."""
        rows = filled.log()
        assert [r["id"] for r in rows] == list(range(1, 8))
        assert set(rows[0]) == {"id", "ts", "expert", "context", "score", "source", "result_id"}
        assert (rows[0]["result_id"], rows[1]["source"], rows[2]["source"]) == ("r1", "judge", "feedback")
        assert [r["score"] for r in filled.log(limit=2)] == [1.0, 0.75]
        assert filled.log(limit=0) == []

    @pytest.mark.parametrize(
        ("expert", "context", "removed", "left"),
        [
            ("coding", None, 2, {("knowledge", "history"), ("reasoning", "math")}),
            (None, "math", 2, {("coding", "python"), ("knowledge", "history")}),
            ("coding", "math", 1, {("coding", "python"), ("knowledge", "history"), ("reasoning", "math")}),
            (None, None, 4, set()),
            (
                "omni",
                None,
                0,
                {("coding", "math"), ("coding", "python"), ("knowledge", "history"), ("reasoning", "math")},
            ),
        ],
        ids=["expert", "context", "both", "all", "nothing"],
    )
    def test_reset_removes_matching_stats_and_their_log(
        self,
        filled: TrustStore,
        expert: str | None,
        context: str | None,
        removed: int,
        left: set[tuple[str, str]],
    ) -> None:
        """``reset`` deletes the matching pairs and their log rows and returns how many pairs went."""
        assert filled.reset(expert, context) == removed
        assert {(s.expert, s.context) for s in filled.stats()} == left
        assert {(r["expert"], r["context"]) for r in filled.log()} == left
        trust, evidence = filled.lookup(["coding"], "math")
        if ("coding", "math") not in left:
            assert (trust[0], evidence[0]) == (0.5, 0)


class TestExport:
    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_stats_round_trip(self, filled: TrustStore, fmt: Any) -> None:
        """Exported stats read back as the same TrustStat values."""
        out = io.StringIO()
        assert filled.export(out, fmt=fmt) == 4
        text = out.getvalue()
        if fmt == "jsonl":
            rows = [json.loads(line) for line in text.splitlines()]
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
            for row in rows:
                row.update(
                    trust=float(row["trust"]),
                    evidence=int(row["evidence"]),
                    weight=float(row["weight"]),
                    updated_at=float(row["updated_at"]),
                )
        assert [TrustStat(**row) for row in rows] == filled.stats()

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_log_to_a_file_round_trips(self, filled: TrustStore, tmp_path: Path, fmt: Any) -> None:
        """The log exported to a file (folders created) holds every row with its fields."""
        path = tmp_path / "out" / f"log.{fmt}"
        assert filled.export(path, fmt=fmt, what="log") == 7
        text = path.read_text(encoding="utf-8")
        if fmt == "jsonl":
            rows = [json.loads(line) for line in text.splitlines()]
            assert rows == filled.log()
        else:
            rows = list(csv.DictReader(io.StringIO(text)))
            assert [(r["expert"], r["context"], float(r["score"]), r["source"]) for r in rows] == [
                (r["expert"], r["context"], r["score"], r["source"]) for r in filled.log()
            ]
            assert [r["result_id"] for r in rows][:2] == ["r1", ""]

    def test_empty_csv_export_has_a_header(self, store: TrustStore) -> None:
        """An empty store exports a CSV with only its header row."""
        out = io.StringIO()
        assert store.export(out, fmt="csv") == 0
        assert out.getvalue() == "expert,context,trust,evidence,weight,updated_at\n"


class TestVersioning:
    def test_schema_version_and_settings_are_recorded(self, db: Path) -> None:
        """A new file records its schema version and the settings it was created with."""
        TrustStore(db, decay=0.9, prior=0.25).close()
        meta = _meta(db)
        assert meta["schema_version"] == str(TrustStore.SCHEMA_VERSION) == "1"
        assert (float(meta["decay"]), float(meta["prior"]), float(meta["prior_weight"])) == (0.9, 0.25, 1.0)

    def test_newer_schema_version_raises_config_error(self, db: Path) -> None:
        """A file written by a newer schema is refused with a ConfigError naming the file."""
        TrustStore(db).close()
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.close()
        with pytest.raises(ConfigError, match="schema version 2 is newer") as info:
            TrustStore(db)
        assert info.value.path == str(db)

    def test_non_database_file_raises_config_error(self, db: Path) -> None:
        """A file that is not SQLite is a ConfigError, and it is left untouched."""
        content = "this is not a database\n" * 50
        db.write_text(content)
        with pytest.raises(ConfigError, match="not a trust store"):
            TrustStore(db)
        assert db.read_text() == content

    def test_other_sqlite_database_raises_config_error(self, db: Path) -> None:
        """A SQLite file with someone else's tables is a ConfigError."""
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE users (name TEXT)")
        conn.close()
        with pytest.raises(ConfigError, match="other tables"):
            TrustStore(db)

    def test_migrations_run_once_in_order_when_opening_an_older_file(self, db: Path) -> None:
        """A newer TrustStore migrates a version-1 file once; the old code then refuses it."""
        calls: list[int] = []

        def add_notes(conn: sqlite3.Connection) -> None:
            calls.append(1)
            conn.execute("ALTER TABLE stats ADD COLUMN note TEXT")

        class TrustStoreV2(TrustStore):
            SCHEMA_VERSION: ClassVar[int] = 2
            MIGRATIONS = MappingProxyType({**TrustStore.MIGRATIONS, 1: add_notes})

        with TrustStore(db) as old:
            old.record("coding", "python", 1.0)
        with TrustStoreV2(db) as new:
            assert new.lookup(["coding"], "python")[1].tolist() == [1]
        TrustStoreV2(db).close()
        assert calls == [1]
        assert _meta(db)["schema_version"] == "2"
        with pytest.raises(ConfigError, match="newer"):
            TrustStore(db)

    def test_missing_migration_step_raises_config_error(self, db: Path) -> None:
        """Opening an older file without a migration path is a ConfigError, and the file keeps its version."""

        class TrustStoreV3(TrustStore):
            SCHEMA_VERSION: ClassVar[int] = 3

        TrustStore(db).close()
        with pytest.raises(ConfigError, match="no migration from schema version 1"):
            TrustStoreV3(db)
        assert _meta(db)["schema_version"] == "1"


def _write_in_process(path: str, barrier: Any, count: int) -> None:
    """A spawned process: waits for its siblings, then records ``count`` scores one at a time."""
    with TrustStore(path, decay=1.0) as store:
        barrier.wait(timeout=60)
        for i in range(count):
            store.record("coding", "python", (i % 5) / 4)


class TestConcurrency:
    def test_threads_sharing_a_store_lose_no_update(self, db: Path) -> None:
        """8 threads × 200 records on one store give n = 1600, 1600 log rows and the exact mean."""
        threads_n, per_thread = 8, 200
        barrier = threading.Barrier(threads_n)
        errors: list[BaseException] = []
        with TrustStore(db, decay=1.0, prior_weight=0.0) as store:

            def work(k: int) -> None:
                try:
                    barrier.wait(timeout=30)
                    for i in range(per_thread):
                        store.record("coding", "python", (i + k) % 2, result_id=f"{k}-{i}")
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            (stat,) = store.stats()
            log_rows = store.log()
        assert errors == []
        assert stat.evidence == threads_n * per_thread == 1600
        assert len(log_rows) == 1600 and len({r["result_id"] for r in log_rows}) == 1600
        assert stat.trust == pytest.approx(0.5)

    def test_processes_sharing_a_file_lose_no_update(self, db: Path) -> None:
        """4 spawned processes × 200 records on one file give n = 800 exactly."""
        procs_n, per_proc = 4, 200
        TrustStore(db, decay=1.0).close()  # one process creates the file; the others open it
        ctx = multiprocessing.get_context("spawn")
        barrier = ctx.Barrier(procs_n)
        procs = [
            ctx.Process(target=_write_in_process, args=(str(db), barrier, per_proc)) for _ in range(procs_n)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * procs_n
        with TrustStore(db, decay=1.0, prior_weight=0.0) as store:
            (stat,) = store.stats()
            assert stat.evidence == procs_n * per_proc == 800
            assert len(store.log()) == 800
        assert stat.trust == pytest.approx(0.5)  # each process wrote 0, .25, .5, .75, 1 forty times


class TestCli:
    @pytest.fixture
    def cli_db(self, db: Path) -> Path:
        with TrustStore(db) as store:
            store.record("reasoning", "math", 1.0)
            store.record("coding", "python", 0.0)
            store.record("coding", "math", 1.0)
        return db

    def test_show_prints_a_sorted_table(self, cli_db: Path) -> None:
        """`trust show` lists expert, context, trust and evidence, sorted by expert and context."""
        out = runner.invoke(app, ["trust", "show", "--db", str(cli_db)])
        assert out.exit_code == 0, out.output
        lines = [line.split() for line in out.stdout.splitlines() if line.strip()]
        assert lines[0] == ["expert", "context", "trust", "evidence", "updated"]
        assert [line[:4] for line in lines[1:]] == [
            ["coding", "math", "0.750", "1"],
            ["coding", "python", "0.250", "1"],
            ["reasoning", "math", "0.750", "1"],
        ]

    def test_show_json_with_filters(self, cli_db: Path) -> None:
        """`trust show --json --expert coding` prints only coding's stats as JSON."""
        out = runner.invoke(app, ["trust", "show", "--db", str(cli_db), "--expert", "coding", "--json"])
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert [(d["expert"], d["context"], d["evidence"]) for d in data] == [
            ("coding", "math", 1),
            ("coding", "python", 1),
        ]
        with TrustStore(cli_db) as store:
            assert data == [asdict(s) for s in store.stats(expert="coding")]

    def test_show_on_a_missing_file_creates_nothing(self, tmp_path: Path) -> None:
        """`trust show` on a store that does not exist says so and does not create it."""
        path = tmp_path / "none.sqlite3"
        out = runner.invoke(app, ["trust", "show", "--db", str(path)])
        assert out.exit_code == 0, out.output
        assert "no trust recorded" in out.stderr
        assert not path.exists()

    def test_show_defaults_to_the_data_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --db the commands use the default store."""
        monkeypatch.setenv("MOE_AGENTS_DATA_DIR", str(tmp_path))
        with TrustStore() as store:
            store.record("omni", "images", 1.0)
        out = runner.invoke(app, ["trust", "show", "--json"])
        assert out.exit_code == 0, out.output
        assert [d["expert"] for d in json.loads(out.stdout)] == ["omni"]

    def test_reset_yes_removes_matching_entries(self, cli_db: Path) -> None:
        """`trust reset --context math --yes` removes those entries without asking."""
        out = runner.invoke(app, ["trust", "reset", "--db", str(cli_db), "--context", "math", "--yes"])
        assert out.exit_code == 0, out.output
        assert "removed 2" in out.stdout
        with TrustStore(cli_db) as store:
            assert [(s.expert, s.context) for s in store.stats()] == [("coding", "python")]

    @pytest.mark.parametrize(("answer", "left"), [("n\n", 3), ("y\n", 1)], ids=["declined", "confirmed"])
    def test_reset_asks_for_confirmation(self, cli_db: Path, answer: str, left: int) -> None:
        """Without --yes, `trust reset` asks first and removes nothing when declined."""
        out = runner.invoke(app, ["trust", "reset", "--db", str(cli_db), "--expert", "coding"], input=answer)
        assert "Forget 2 trust entries" in out.stdout
        assert out.exit_code == (1 if answer == "n\n" else 0), out.output
        with TrustStore(cli_db) as store:
            assert len(store.stats()) == left

    def test_export_jsonl_to_stdout(self, cli_db: Path) -> None:
        """`trust export` writes the stats as JSON Lines on stdout."""
        out = runner.invoke(app, ["trust", "export", "--db", str(cli_db)])
        assert out.exit_code == 0, out.output
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        with TrustStore(cli_db) as store:
            assert rows == [asdict(s) for s in store.stats()]

    def test_export_log_csv_to_a_file(self, cli_db: Path, tmp_path: Path) -> None:
        """`trust export --log --format csv --out FILE` writes the feedback log as CSV."""
        path = tmp_path / "log.csv"
        out = runner.invoke(
            app, ["trust", "export", "--db", str(cli_db), "--log", "--format", "csv", "--out", str(path)]
        )
        assert out.exit_code == 0, out.output
        assert "wrote 3 rows" in out.stderr
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        assert [(r["expert"], r["context"], float(r["score"])) for r in rows] == [
            ("reasoning", "math", 1.0),
            ("coding", "python", 0.0),
            ("coding", "math", 1.0),
        ]

    def test_a_file_that_is_not_a_store_is_a_one_line_error(self, db: Path) -> None:
        """A --db that is not a trust store fails with exit code 1 and a message, no traceback."""
        db.write_text("not sqlite\n" * 50)
        out = runner.invoke(app, ["trust", "show", "--db", str(db)])
        assert out.exit_code == 1
        assert "not a trust store" in " ".join(out.stderr.split())  # rich wraps long lines
        assert "Traceback" not in out.output
