"""Conversation memory: the recent buffer, the verbatim log, salience-scored recall, the token
budget of ``context_for``, ``forget`` scrubbing the file, and the ``moe-agents memory`` commands."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from moe_agents.cli import app
from moe_agents.errors import ConfigError, InvalidInput, RunError
from moe_agents.memory import MemoryConfig, MemoryStore, count_tokens
from moe_agents.testing import HashingEncoder

runner = CliRunner()
encoder = HashingEncoder(dim=1024)

TOPICS = [
    "volcanoes erupt magma",
    "python list comprehension syntax",
    "french revolution causes",
    "photosynthesis chlorophyll sunlight",
    "stock market index funds",
    "baking sourdough bread starter",
    "jupiter moons orbit",
    "guitar chord progressions",
    "marathon training schedule",
    "quantum entanglement basics",
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "memory.sqlite3"


def _open(path: Path | str, **kwargs: object) -> MemoryStore:
    return MemoryStore(MemoryConfig(path=path, **kwargs), encoder=encoder)  # type: ignore[arg-type]


@pytest.fixture
def store(db: Path) -> Iterator[MemoryStore]:
    with _open(db, recent_turns=4) as s:
        yield s


def _fill(store: MemoryStore, session: str, n: int) -> None:
    for i in range(n):
        store.add_exchange(session, f"question {i}", f"answer {i}", experts=["coding", "reasoning"])


class TestConfig:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"recent_turns": -1},
            {"recall_k": -2},
            {"weights": (0.0, 0.0, 0.0, 0.0)},
            {"weights": (0.5, -0.1, 0.3, 0.3)},
            {"weights": (0.5, float("nan"), 0.3, 0.3)},
            {"weights": (0.5, 0.5)},
        ],
        ids=[
            "turns-negative",
            "k-negative",
            "weights-zero",
            "weight-negative",
            "weight-nan",
            "weights-short",
        ],
    )
    def test_invalid_settings_are_config_errors(self, kwargs: dict[str, object]) -> None:
        """Invalid settings raise ConfigError naming the field."""
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            MemoryConfig(**kwargs)  # type: ignore[arg-type]

    def test_default_path_is_in_the_data_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without a path the store lives at $MOE_AGENTS_DATA_DIR/memory.sqlite3."""
        monkeypatch.setenv("MOE_AGENTS_DATA_DIR", str(tmp_path))
        with MemoryStore(encoder=encoder) as s:
            assert s.path == str(tmp_path / "memory.sqlite3")
        assert (tmp_path / "memory.sqlite3").exists()

    def test_a_foreign_sqlite_file_is_refused(self, tmp_path: Path) -> None:
        """A SQLite file with other tables is not taken for a memory store."""
        path = tmp_path / "other.sqlite3"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
        conn.close()
        with pytest.raises(ConfigError, match="not a memory store"):
            _open(path)

    def test_a_non_sqlite_file_is_refused(self, tmp_path: Path) -> None:
        """A file that is not SQLite raises ConfigError naming it."""
        path = tmp_path / "junk.sqlite3"
        path.write_bytes(b"not a database at all" * 100)
        with pytest.raises(ConfigError, match=r"junk\.sqlite3"):
            _open(path)


class TestInput:
    @pytest.mark.parametrize("session", ["", None], ids=["empty", "none"])
    def test_empty_session_is_invalid(self, store: MemoryStore, session: str | None) -> None:
        """An empty or missing session id is InvalidInput."""
        with pytest.raises(InvalidInput, match="session"):
            store.add_exchange(session, "q", "a", experts=["x"])  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="session"):
            store.recent(session)  # type: ignore[arg-type]

    @pytest.mark.parametrize("score", [-0.1, 1.5, float("nan"), "good"], ids=["neg", "above", "nan", "str"])
    def test_score_outside_unit_interval_is_invalid(self, store: MemoryStore, score: object) -> None:
        """Feedback scores outside [0, 1] are InvalidInput."""
        with pytest.raises(InvalidInput, match="score"):
            store.record_feedback("r1", score)  # type: ignore[arg-type]

    def test_expert_names_with_commas_are_invalid(self, store: MemoryStore) -> None:
        """Expert names are comma-joined in the log, so a comma in a name is refused."""
        with pytest.raises(InvalidInput, match="commas"):
            store.add_exchange("s", "q", "a", experts=["a,b"])
        assert store.transcript("s") == []

    def test_recall_without_encoder_is_a_config_error(self, db: Path) -> None:
        """A store opened without an encoder can read transcripts but not recall."""
        with _open(db) as s:
            _fill(s, "s", 1)
        with MemoryStore(MemoryConfig(path=db)) as bare:
            assert len(bare.transcript("s")) == 2
            with pytest.raises(ConfigError, match="encoder"):
                bare.recall("s", "question")

    def test_closed_store_raises_run_error_naming_the_path(self, db: Path) -> None:
        """SQLite errors surface as RunError naming the file."""
        s = _open(db)
        s.close()
        with pytest.raises(RunError, match=str(db)):
            s.transcript("s")


class TestRecentBuffer:
    def test_keeps_the_last_n_turns(self, store: MemoryStore) -> None:
        """The buffer holds the last recent_turns turns, oldest first."""
        _fill(store, "s", 5)
        turns = store.recent("s")
        assert [(t.role, t.text) for t in turns] == [
            ("user", "question 3"),
            ("assistant", "answer 3"),
            ("user", "question 4"),
            ("assistant", "answer 4"),
        ]
        assert turns[-1].experts == ("coding", "reasoning")

    def test_is_rebuilt_after_reopening(self, db: Path) -> None:
        """A new store rebuilds the same buffer from the database."""
        with _open(db, recent_turns=3) as s:
            _fill(s, "s", 4)
            before = s.recent("s")
        with _open(db, recent_turns=3) as s:
            assert s.recent("s") == before
            s.add_exchange("s", "question 9", "answer 9", experts=["x"])
            assert [t.text for t in s.recent("s")] == ["answer 3", "question 9", "answer 9"]

    def test_sessions_are_separate(self, store: MemoryStore) -> None:
        """One session's turns never appear in another's buffer."""
        _fill(store, "a", 2)
        store.add_exchange("b", "hello", "hi", experts=["x"])
        assert [t.text for t in store.recent("b")] == ["hello", "hi"]
        assert store.recent("unknown") == []

    def test_concurrent_writers_lose_no_turn(self, store: MemoryStore) -> None:
        """Threads adding exchanges to one store all land in the log and the buffer stays ordered."""

        def work(n: int) -> None:
            for i in range(10):
                store.add_exchange("s", f"t{n} q{i}", f"t{n} a{i}", experts=["x"])

        assert store.recent("s") == []  # cached, so the writers append to the buffer
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log = store.transcript("s")
        assert len(log) == 80
        assert store.recent("s") == log[-4:]


class TestLog:
    def test_verbatim_log_survives_reopen(self, db: Path) -> None:
        """Every turn is stored verbatim with its role, experts and result id."""
        text = "line one\n  line two with  spaces\tand ünïcode"
        with _open(db) as s:
            s.add_exchange("s", text, "the answer", experts=["a", "b"], result_id="r1")
            s.add_exchange("s", "second", "", experts=[])
        with _open(db) as s:
            log = s.transcript("s")
        assert [(t.role, t.text, t.experts, t.result_id) for t in log] == [
            ("user", text, ("a", "b"), "r1"),
            ("assistant", "the answer", ("a", "b"), "r1"),
            ("user", "second", (), None),
            ("assistant", "", (), None),
        ]
        assert [t.id for t in log] == sorted(t.id for t in log)

    def test_sessions_lists_counts_and_last_activity(self, store: MemoryStore) -> None:
        """sessions() gives each session's turn count, the most recently active first."""
        _fill(store, "old", 3)
        _fill(store, "new", 1)
        listed = store.sessions()
        assert [(s, n) for s, n, _ in listed] == [("new", 2), ("old", 6)]
        assert listed[0][2] >= listed[1][2]


class TestRecall:
    def test_planted_turn_is_recalled_first(self, db: Path) -> None:
        """Among 30 unrelated exchanges, the one about Rex answers a question about Rex."""
        with _open(db, recent_turns=2) as s:
            for i in range(10):
                s.add_exchange("s", f"tell me about {TOPICS[i]}", f"{TOPICS[i]} explained", experts=["k"])
            s.add_exchange(
                "s", "my dog Rex is allergic to chicken", "Noted, Rex should avoid chicken.", experts=["k"]
            )
            for i in range(20):
                topic = TOPICS[i % len(TOPICS)]
                s.add_exchange("s", f"more on {topic} part {i}", f"{topic} details {i}", experts=["k"])
            found = s.recall("s", "what can Rex eat?", k=3)
        assert found
        assert "Rex is allergic to chicken" in found[0].text
        assert found[0].score == pytest.approx(found[0].similarity * (0.5 + 0.5 * found[0].salience))
        assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)

    def test_turns_in_the_recent_buffer_are_not_recalled(self, store: MemoryStore) -> None:
        """An exchange still in the recent buffer is not recalled again."""
        store.add_exchange("s", "my dog Rex is allergic to chicken", "noted", experts=["k"])
        assert store.recall("s", "what can Rex eat?") == []
        _fill(store, "s", 2)  # pushes the Rex exchange out of the 4-turn buffer
        assert [m.text for m in store.recall("s", "what can Rex eat?")] == [
            "user: my dog Rex is allergic to chicken\nassistant: noted"
        ]

    def test_other_sessions_are_not_recalled(self, db: Path) -> None:
        """Recall only searches the given session's memories."""
        with _open(db, recent_turns=0) as s:
            s.add_exchange("a", "my dog Rex is allergic to chicken", "noted", experts=["k"])
            assert s.recall("b", "Rex chicken") == []
            assert len(s.recall("a", "Rex chicken")) == 1


class TestSalience:
    def test_first_memory_is_fully_novel_and_a_repeat_is_not(self, db: Path) -> None:
        """Novelty is 1 for a session's first memory and ~0 for an exact repeat."""
        with _open(db, recent_turns=0) as s:
            s.add_exchange("s", "the sky is blue", "yes", experts=["k"], result_id="r1")
            s.add_exchange("s", "the sky is blue", "yes", experts=["k"], result_id="r2")
            first, second = sorted(s.recall("s", "the sky is blue", k=5), key=lambda m: m.id)
        assert first.novelty == pytest.approx(1.0)
        assert second.novelty == pytest.approx(0.0, abs=1e-6)
        assert second.salience < first.salience

    def test_components_and_weighted_salience(self, db: Path) -> None:
        """Surprise is 1 - confidence, reward counts 0.5 before feedback, salience is the weighted mean."""
        with _open(db, recent_turns=0, weights=(1.0, 1.0, 1.0, 1.0)) as s:
            s.add_exchange("s", "hello there", "hi", experts=["k"], confidence=0.8, conflict=True)
            (m,) = s.recall("s", "hello there")
        assert (m.novelty, m.surprise, m.reward, m.conflict) == (
            pytest.approx(1.0),
            pytest.approx(0.2),
            None,
            1.0,
        )
        assert m.salience == pytest.approx((1.0 + 0.2 + 0.5 + 1.0) / 4)

    def test_feedback_raises_reward_and_salience(self, db: Path) -> None:
        """Good feedback on an exchange's result id raises its reward and salience, and persists."""
        with _open(db, recent_turns=0) as s:
            s.add_exchange("s", "the sky is blue", "yes", experts=["k"], result_id="r1")
            (before,) = s.recall("s", "sky")
            assert s.record_feedback("r1", 1.0) is True
            assert s.record_feedback("unknown", 1.0) is False
        with _open(db, recent_turns=0) as s:
            (after,) = s.recall("s", "sky")
        assert before.reward is None
        assert after.reward == 1.0
        assert after.salience == pytest.approx(before.salience + 0.3 * 0.5)


class TestContext:
    def test_format_and_recent_turns_first(self, db: Path) -> None:
        """The context lists recent turns, then relevant memories, in the documented format."""
        with _open(db, recent_turns=2) as s:
            s.add_exchange("s", "my dog Rex is allergic to chicken", "noted", experts=["k"])
            s.add_exchange("s", "hello", "hi", experts=["k"])
            ctx = s.context_for("s", "what can Rex eat?", 1000)
        assert ctx.text == (
            "Earlier in this conversation:\nuser: hello\nassistant: hi\n\n"
            "Relevant memories:\n- user: my dog Rex is allergic to chicken\n  assistant: noted"
        )
        assert ctx.tokens == count_tokens(ctx.text)
        assert [t.text for t in ctx.turns] == ["hello", "hi"]
        assert len(ctx.memories) == 1

    def test_tight_budget_keeps_the_newest_turns(self, store: MemoryStore) -> None:
        """When the turns do not all fit, the newest are kept and memories come after them."""
        _fill(store, "s", 4)
        header = count_tokens("Earlier in this conversation:")
        budget = count_tokens("Earlier in this conversation:\nuser: question 3\nassistant: answer 3")
        ctx = store.context_for("s", "question", budget)
        assert header < budget
        assert [t.text for t in ctx.turns] == ["question 3", "answer 3"]
        assert ctx.memories == ()
        assert store.context_for("s", "question", 0).text == ""

    @settings(max_examples=60, deadline=None)
    @given(
        budget=st.integers(min_value=0, max_value=200),
        lengths=st.lists(st.integers(min_value=0, max_value=60), min_size=0, max_size=12),
        recent=st.integers(min_value=0, max_value=6),
    )
    def test_never_over_budget(self, budget: int, lengths: list[int], recent: int) -> None:
        """Whatever the budget and turn lengths, the context never counts more tokens than the budget."""
        with MemoryStore(MemoryConfig(path=":memory:", recent_turns=recent), encoder=encoder) as s:
            for i, n in enumerate(lengths):
                words = " ".join(f"w{(i * 7 + j) % 23}" for j in range(n))
                s.add_exchange("s", f"topic {words}", f"reply {words} {words}", experts=["k"])
            ctx = s.context_for("s", "topic w1 w2 w3", budget)
            recent_turns = s.recent("s")
        assert count_tokens(ctx.text) == ctx.tokens <= budget
        assert list(ctx.turns) == recent_turns[len(recent_turns) - len(ctx.turns) :]
        if len(ctx.turns) < len(recent_turns):  # memories never displace a turn: the next one did not fit
            kept = recent_turns[len(recent_turns) - len(ctx.turns) - 1 :]
            lines = "\n".join(f"{t.role}: {t.text}" for t in kept)
            assert count_tokens(f"Earlier in this conversation:\n{lines}") > budget

    def test_custom_counter(self, store: MemoryStore) -> None:
        """A different token counter is honoured."""
        _fill(store, "s", 2)
        ctx = store.context_for("s", "question", 60, counter=len)
        assert len(ctx.text) <= 60
        assert ctx.turns


def _raw_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


class TestForget:
    def test_forget_removes_the_text_from_the_file(self, db: Path) -> None:
        """After forget, the session's text is nowhere in the database or WAL bytes; others stay."""
        secret = "zebra-quartz-7731-unique-secret"
        with _open(db) as s:
            s.add_exchange("private", f"my password hint is {secret}", f"noted {secret}", experts=["k"])
            _fill(s, "private", 3)
            s.add_exchange("other", "keep me please", "kept", experts=["k"])
            assert secret.encode() in _raw_bytes(db)
            assert s.forget("private") == 4 * 3  # 4 exchanges: 8 turns and 4 memories
            assert secret.encode() not in _raw_bytes(db)
            assert s.recent("private") == []
            assert s.transcript("private") == []
            assert [t.text for t in s.transcript("other")] == ["keep me please", "kept"]
            assert s.forget("private") == 0
        assert secret.encode() not in _raw_bytes(db)
        with _open(db) as s:
            assert [name for name, _, _ in s.sessions()] == ["other"]

    def test_forget_clears_the_buffer_of_a_cached_session(self, store: MemoryStore) -> None:
        """A session's in-memory buffer is emptied, so new turns start a fresh buffer."""
        _fill(store, "s", 2)
        assert store.recent("s")
        store.forget("s")
        store.add_exchange("s", "fresh", "start", experts=["k"])
        assert [t.text for t in store.recent("s")] == ["fresh", "start"]


class TestCli:
    @pytest.fixture
    def cli_db(self, db: Path) -> Path:
        with _open(db) as s:
            s.add_exchange("alpha", "what is 2+2?", "4", experts=["reasoning", "coding"], result_id="r1")
            s.add_exchange("beta", "hello", "hi there", experts=["knowledge"])
            s.add_exchange("beta", "bye", "see you", experts=["knowledge"])
        return db

    def test_show_lists_sessions(self, cli_db: Path) -> None:
        """`memory show` lists sessions with their turn counts, the most recent first."""
        out = runner.invoke(app, ["memory", "show", "--db", str(cli_db)])
        assert out.exit_code == 0, out.output
        lines = [line.split() for line in out.stdout.splitlines() if line.strip()]
        assert lines[0] == ["session", "turns", "last", "activity"]
        assert [line[:2] for line in lines[1:]] == [["beta", "4"], ["alpha", "2"]]

    def test_show_json_sessions(self, cli_db: Path) -> None:
        """`memory show --json` prints the sessions as JSON."""
        out = runner.invoke(app, ["memory", "show", "--db", str(cli_db), "--json"])
        assert out.exit_code == 0, out.output
        assert [(d["session"], d["turns"]) for d in json.loads(out.stdout)] == [("beta", 4), ("alpha", 2)]

    def test_show_a_transcript(self, cli_db: Path) -> None:
        """`memory show SESSION` prints the transcript with roles and answering experts."""
        out = runner.invoke(app, ["memory", "show", "alpha", "--db", str(cli_db)])
        assert out.exit_code == 0, out.output
        lines = out.stdout.splitlines()
        assert lines[0].endswith("user: what is 2+2?")
        assert lines[1].endswith("assistant (reasoning, coding): 4")

    def test_show_a_transcript_as_json(self, cli_db: Path) -> None:
        """`memory show SESSION --json` prints every turn's fields."""
        out = runner.invoke(app, ["memory", "show", "alpha", "--db", str(cli_db), "--json"])
        assert out.exit_code == 0, out.output
        rows = json.loads(out.stdout)
        assert [(r["role"], r["text"], r["experts"], r["result_id"]) for r in rows] == [
            ("user", "what is 2+2?", ["reasoning", "coding"], "r1"),
            ("assistant", "4", ["reasoning", "coding"], "r1"),
        ]

    def test_show_on_a_missing_file_creates_nothing(self, tmp_path: Path) -> None:
        """`memory show` on a store that does not exist says so and does not create it."""
        path = tmp_path / "none.sqlite3"
        out = runner.invoke(app, ["memory", "show", "--db", str(path)])
        assert out.exit_code == 0, out.output
        assert "no sessions recorded" in out.stderr
        out = runner.invoke(app, ["memory", "forget", "alpha", "--db", str(path), "--yes"])
        assert out.exit_code == 0, out.output
        assert not path.exists()

    def test_show_a_bad_file_fails_in_one_line(self, tmp_path: Path) -> None:
        """A file that is not a memory store gives a one-line error and exit code 1."""
        path = tmp_path / "junk.sqlite3"
        path.write_bytes(b"junk" * 1000)
        out = runner.invoke(app, ["memory", "show", "--db", str(path)])
        assert out.exit_code == 1
        message = " ".join(out.stderr.split())
        assert message.startswith("error:") and "not a memory store" in message

    def test_forget_yes_removes_the_session(self, cli_db: Path) -> None:
        """`memory forget SESSION --yes` removes that session only."""
        out = runner.invoke(app, ["memory", "forget", "beta", "--db", str(cli_db), "--yes"])
        assert out.exit_code == 0, out.output
        assert "removed 6 rows (4 turns)" in out.stdout
        with MemoryStore(MemoryConfig(path=cli_db)) as s:
            assert [name for name, _, _ in s.sessions()] == ["alpha"]

    @pytest.mark.parametrize(("answer", "left"), [("n\n", 2), ("y\n", 1)], ids=["declined", "confirmed"])
    def test_forget_asks_for_confirmation(self, cli_db: Path, answer: str, left: int) -> None:
        """Without --yes, `memory forget` asks first and removes nothing when declined."""
        out = runner.invoke(app, ["memory", "forget", "beta", "--db", str(cli_db)], input=answer)
        assert "Forget session beta (4 turns)" in out.stdout
        assert out.exit_code == (1 if answer == "n\n" else 0), out.output
        with MemoryStore(MemoryConfig(path=cli_db)) as s:
            assert len(s.sessions()) == left
