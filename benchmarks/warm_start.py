"""Cold and warm start of the offline default: ``moe-agents ask`` timed in fresh processes.

The baseline is the cold run (an empty cache folder: the GGUF weights are converted and the gate
is fitted); the warm runs reuse that folder. A second part times each phase of a warm start inside
one process (imports, model loads, the answer), to show where the time goes.

Run: ``python benchmarks/warm_start.py [--warm 3]`` (a few minutes on 2 cores).
Writes ``benchmarks/out/warm_start.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

OUT = Path(__file__).parent / "out"
QUESTION = "What is the capital of France?"
CLI = Path(sys.executable).parent / "moe-agents"

PHASES = """
import json, time
t = time.perf_counter()
marks = {}
def mark(name):
    global t
    now = time.perf_counter(); marks[name] = now - t; t = now
import anyio
from moe_agents import default_config_path, load_pipeline
mark("import moe_agents")
import torch, transformers
mark("import torch + transformers")
from transformers import AutoModel, AutoModelForCausalLM
mark("import model classes")
async def main():
    pipeline = load_pipeline(default_config_path())
    mark("build the pipeline")
    async with pipeline:
        mark("load encoder, SmolLM2 and gate")
        await pipeline.run(QUESTION)
        mark("answer")
anyio.run(main)
print(json.dumps(marks))
""".replace("QUESTION", repr(QUESTION))


def _timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall and user CPU seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    args = parser.parse_args()
    console = Console()
    cache = tempfile.mkdtemp(prefix="moe-agents-warm-start-")
    env = {**os.environ, "MOE_AGENTS_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    ask = [str(CLI), "ask", QUESTION]
    runs = {"cold": _timed(ask, env)}
    for i in range(args.warm):
        runs[f"warm {i + 1}"] = _timed(ask, env)
    phases = json.loads(
        subprocess.run(
            [sys.executable, "-c", PHASES], env=env, check=True, capture_output=True, text=True
        ).stdout.splitlines()[-1]
    )

    table = Table(title=f"moe-agents ask {QUESTION!r} (offline default), fresh processes")
    table.add_column("run")
    table.add_column("wall s", justify="right")
    table.add_column("user CPU s", justify="right")
    for name, r in runs.items():
        table.add_row(name, f"{r['wall_s']:.1f}", f"{r['user_s']:.1f}")
    console.print(table)
    phase_table = Table(title="one warm start, phase by phase (one process)")
    phase_table.add_column("phase")
    phase_table.add_column("s", justify="right")
    for name, seconds in phases.items():
        phase_table.add_row(name, f"{seconds:.2f}")
    phase_table.add_row("total", f"{sum(phases.values()):.2f}")
    console.print(phase_table)

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "warm_start.json"
    path.write_text(json.dumps({"question": QUESTION, "runs": runs, "phases": phases}, indent=2))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
