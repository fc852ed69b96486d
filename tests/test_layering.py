"""Layering: the runtime loads no evaluation code, no plotting library and no heavy model library.

The evaluation side is ``moe_agents.evaluation`` and the token-router benchmark
(``token_router.bench``, ``bench_report``, ``train``); the CLI's ``eval`` commands import it lazily.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_agents.errors import ConfigError
from moe_agents.evaluation.figures import agg_figure
from moe_agents.evaluation.residency_trace import plot_residency, residency_trace

PACKAGE = Path(__file__).resolve().parents[1] / "moe_agents"
EVALUATION_SIDE = {
    "evaluation",
    "token_router/bench.py",
    "token_router/bench_report.py",
    "token_router/bench_speed.py",
    "token_router/train.py",
}
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _loaded(code: str, prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``prefixes`` that a fresh interpreter has after ``code``."""
    report = f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    script = f"{code}\nimport json, sys\n{report}"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function, as an absolute name."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _runtime_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "cli"  # the application: its eval commands run benchmarks
        and not any(str(path.relative_to(PACKAGE)).startswith(side) for side in EVALUATION_SIDE)
    ]


class TestRuntimeImports:
    def test_package_import_loads_no_heavy_library(self) -> None:
        """`import moe_agents` loads none of torch, transformers, litellm and matplotlib."""
        heavy = ("torch", "transformers", "litellm", "matplotlib")
        assert [m for m in _loaded("import moe_agents", heavy) if m.split(".")[0] in heavy] == []

    def test_replay_backend_loads_no_evaluation_code(self) -> None:
        """Importing the replay backend and its YAML spec loads no evaluation module and no matplotlib."""
        code = "import moe_agents.backends.replay, moe_agents.backends.specs"
        assert _loaded(code, ("moe_agents.evaluation", "moe_agents.token_router", "matplotlib")) == []

    @pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="shared data absent")
    def test_building_a_replay_backend_loads_no_evaluation_code(self) -> None:
        """Building a replay backend from its spec reads the recordings without any evaluation module."""
        code = (
            "from moe_agents.backends.specs import BUILTIN_BACKENDS, ReplaySpec\n"
            f"spec = ReplaySpec(dataset='gsm8k', model='gpt-4-1106', data_dir={str(DATA)!r})\n"
            "assert len(BUILTIN_BACKENDS['replay'].build(spec)) == 1319"
        )
        assert _loaded(code, ("moe_agents.evaluation", "matplotlib")) == []

    def test_runtime_modules_never_import_evaluation_or_matplotlib(self) -> None:
        """No runtime module imports the evaluation side or matplotlib, not even inside a function."""
        offenders = {
            str(path.relative_to(PACKAGE)): sorted(
                name
                for name in _imports(path)
                if name.split(".")[0] == "matplotlib"
                or name.startswith("moe_agents.evaluation")
                or name.startswith(("moe_agents.token_router.bench", "moe_agents.token_router.train"))
            )
            for path in _runtime_modules()
        }
        assert {path: names for path, names in offenders.items() if names} == {}

    def test_recorded_data_imports_no_backend(self) -> None:
        """The recorded data sets import neither the backends nor the evaluation (no cycle through them)."""
        names = _imports(PACKAGE / "recorded.py") | _imports(PACKAGE / "eval_data.py")
        assert (
            sorted(n for n in names if n.startswith(("moe_agents.backends", "moe_agents.evaluation"))) == []
        )


class TestPlotsNeedMatplotlib:
    @pytest.fixture
    def no_matplotlib(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
            monkeypatch.setitem(sys.modules, name, None)

    def test_figure_without_matplotlib(self, no_matplotlib: None) -> None:
        """Without matplotlib, asking for a figure is a ConfigError naming the extra to install."""
        with pytest.raises(ConfigError, match=r"install moe-agents\[eval\]"):
            agg_figure(4, 3)

    def test_plot_without_matplotlib(self, no_matplotlib: None, tmp_path: Path) -> None:
        """A benchmark plot without matplotlib fails with the same ConfigError and writes nothing."""
        report = residency_trace(n_queries=50)
        with pytest.raises(ConfigError, match=r"install moe-agents\[eval\]"):
            plot_residency(report, tmp_path / "residency.png")
        assert list(tmp_path.iterdir()) == []

    def test_plotting_loads_no_pyplot(self) -> None:
        """Plots draw on their own Agg canvas: pyplot, and with it a global backend, is never loaded."""
        code = (
            "import io\n"
            "from moe_agents.evaluation.figures import agg_figure\n"
            "agg_figure(2, 2).savefig(io.BytesIO(), format='png')"
        )
        assert _loaded(code, ("matplotlib.pyplot",)) == []
