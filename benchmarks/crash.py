"""Crash safety of the trust store: ``kill -9`` a writer in a burst of feedback, reopen, count the losses.

Each round starts a writer process that records scores into one trust store file (shared by every
round) in a tight loop and acknowledges each score on stdout once ``record()`` returned. After a
random number of acknowledgements (seeded per round) the writer is SIGKILLed; the file is reopened
and checked: ``PRAGMA integrity_check``, the schema version, every pair's stats against its feedback
log (the two are written in one transaction), and which of the round's scores are there. A score
acknowledged but missing is a lost write (goal 0); the one write in flight at the kill may be there
or not. Finally one more score is recorded through the reopened store.

Run: ``python benchmarks/crash.py [--rounds 50] [--min-acks 5] [--max-acks 400]``
Writes ``benchmarks/out/crash.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from moe_agents.errors import MoEError
from moe_agents.routing.trust import TrustStore

OUT = Path(__file__).parent / "out"

WRITER = """
import sys
from moe_agents.routing.trust import TrustStore

store = TrustStore(sys.argv[1])
n = 0
while True:
    n += 1
    store.record(f"e{n % 7}", f"c{n % 5}", (n % 11) / 10, result_id=f"{sys.argv[2]}:{n}")
    print("ack", n, flush=True)
"""


def kill_writer(path: Path, round_: int, target: int) -> int:
    """Runs a writer until it acknowledged ``target`` scores, SIGKILLs it; returns the last one it acked."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(round_)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked = 0
    for line in proc.stdout:
        if line.startswith("ack ") and (acked := int(line.split()[1])) >= target:
            break
    else:
        raise SystemExit(f"round {round_}: writer exited with {proc.wait()}:\n{proc.stderr.read()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for line in proc.stdout.read().splitlines(keepends=True):  # acknowledged between our read and the kill
        if line.startswith("ack ") and line.endswith("\n"):
            acked = max(acked, int(line.split()[1]))
    proc.stdout.close()
    proc.stderr.close()
    return acked


def inspect(path: Path, round_: int) -> dict[str, Any]:
    """What a raw SQLite connection finds in the file: integrity, schema, stats vs log, the round's ids."""
    with sqlite3.connect(path) as conn:
        integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        stats = {
            (e, c): (s, w, n) for e, c, s, w, n in conn.execute("SELECT expert, context, s, w, n FROM stats")
        }
        logged: dict[tuple[str, str], list[float]] = {}
        for e, c, q in conn.execute("SELECT expert, context, score FROM feedback ORDER BY id"):
            logged.setdefault((e, c), []).append(q)
        ids = [
            int(rid.split(":")[1])
            for (rid,) in conn.execute(
                "SELECT result_id FROM feedback WHERE result_id LIKE ?", (f"{round_}:%",)
            )
        ]
    conn.close()
    decay = float(meta.get("decay", "nan"))
    mismatched = []  # [expert, context, n - log rows]: the offset stays put while later writes agree
    for pair in sorted(set(stats) | set(logged)):
        s, w, n = stats.get(pair, (0.0, 0.0, 0))
        s_log = w_log = 0.0
        for q in logged.get(pair, []):
            s_log, w_log = decay * s_log + q, decay * w_log + 1.0
        offset = n - len(logged.get(pair, []))
        if offset or not (math.isclose(s, s_log, rel_tol=1e-9) and math.isclose(w, w_log, rel_tol=1e-9)):
            mismatched.append([*pair, offset])
    return {
        "integrity_ok": integrity == ["ok"],
        "schema_ok": meta.get("schema_version") == str(TrustStore.SCHEMA_VERSION),
        "mismatched_pairs": mismatched,
        "ids": set(ids),
    }


def run_round(path: Path, round_: int, args: argparse.Namespace) -> dict[str, Any]:
    target = random.Random(round_).randint(args.min_acks, args.max_acks)
    acked = kill_writer(path, round_, target)
    wal = Path(f"{path}-wal")
    wal_bytes = wal.stat().st_size if wal.exists() else 0
    t = time.perf_counter()
    with TrustStore(path) as store:  # recovers the WAL the killed writer left
        reopen_ms = (time.perf_counter() - t) * 1000
        found = inspect(path, round_)
        try:
            store.record("e0", "c0", 1.0, source="after-crash")
            write_ok = True
        except MoEError:
            write_ok = False
    ids = found.pop("ids")
    lost = sorted(set(range(1, acked + 1)) - ids)
    return {
        "round": round_,
        "target": target,
        "acked": acked,
        "found": len(ids),
        "lost_acked": len(lost),
        "in_flight": "kept" if acked + 1 in ids else "lost",
        "unexpected": len(ids - set(range(1, acked + 2))),
        "write_after_reopen_ok": write_ok,
        "wal_bytes_at_kill": wal_bytes,
        "reopen_ms": reopen_ms,
        **found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--min-acks", type=int, default=5, help="fewest acknowledged writes before a kill")
    parser.add_argument("--max-acks", type=int, default=400, help="most acknowledged writes before a kill")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not hasattr(signal, "SIGKILL"):
        raise SystemExit("needs SIGKILL (not available on this platform)")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    with tempfile.TemporaryDirectory(prefix="moe-agents-crash-") as tmp:
        path = Path(tmp) / "trust.sqlite3"
        rounds = [run_round(path, i, args) for i in range(args.rounds)]
        final = inspect(path, -1)
    before: set[tuple[str, str, int]] = set()
    for r in rounds:  # the file is shared: count each mismatch in the round it appeared
        now = {(e, c, offset) for e, c, offset in r["mismatched_pairs"]}
        r["new_mismatches"], before = len(now - before), now
    summary = {
        "rounds": len(rounds),
        "acknowledged": sum(r["acked"] for r in rounds),
        "lost_acknowledged": sum(r["lost_acked"] for r in rounds),
        "in_flight_lost": sum(r["in_flight"] == "lost" for r in rounds),
        "in_flight_kept": sum(r["in_flight"] == "kept" for r in rounds),
        "unexpected_rows": sum(r["unexpected"] for r in rounds),
        "integrity_failures": sum(not r["integrity_ok"] for r in rounds),
        "schema_failures": sum(not r["schema_ok"] for r in rounds),
        "stat_log_mismatches": sum(r["new_mismatches"] for r in rounds),
        "failed_writes_after_reopen": sum(not r["write_after_reopen_ok"] for r in rounds),
        "reopen_ms_p50": statistics.median(r["reopen_ms"] for r in rounds),
        "reopen_ms_max": max(r["reopen_ms"] for r in rounds),
        "final_integrity_ok": final["integrity_ok"] and not final["mismatched_pairs"],
    }

    table = Table(title=f"trust store under kill -9: {args.rounds} rounds, one file", title_justify="left")
    for column in ("measure", "value", "goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for measure, key, goal in (
        ("rounds", "rounds", ""),
        ("acknowledged writes", "acknowledged", ""),
        ("lost acknowledged writes", "lost_acknowledged", "0"),
        ("in-flight write lost", "in_flight_lost", ""),
        ("in-flight write kept", "in_flight_kept", ""),
        ("rows never written", "unexpected_rows", "0"),
        ("rounds failing integrity_check", "integrity_failures", "0"),
        ("schema version lost", "schema_failures", "0"),
        ("stats/log mismatches", "stat_log_mismatches", "0"),
        ("failed writes after reopen", "failed_writes_after_reopen", "0"),
    ):
        table.add_row(measure, str(summary[key]), goal)
    table.add_row(
        "reopen (recovery) p50 / max ms",
        f"{summary['reopen_ms_p50']:.1f} / {summary['reopen_ms_max']:.1f}",
        "",
    )
    Console().print(table)

    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "crash.json").write_text(
        json.dumps({"settings": settings, "summary": summary, "rounds": rounds}, indent=2)
    )
    print(f"wrote {args.out / 'crash.json'}")
    failed = summary["lost_acknowledged"] + summary["integrity_failures"] + summary["stat_log_mismatches"]
    raise SystemExit(1 if failed or summary["unexpected_rows"] or not summary["final_integrity_ok"] else 0)


if __name__ == "__main__":
    main()
