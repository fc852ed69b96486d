"""A silent library: events go to stdlib logging, nothing is printed unless the application asks."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import structlog

from moe_agents.logging import get_logger

ROOT = Path(__file__).resolve().parents[1]

_TINY_PIPELINE = """
import anyio
from moe_agents import CodingExpert, Pipeline, ReasoningExpert, Router, RouterConfig
from moe_agents.testing import FunctionBackend, HashingEncoder

async def main() -> None:
    experts = [
        CodingExpert(backends=[FunctionBackend(lambda m: "def f(): pass", name="c")]),
        ReasoningExpert(backends=[FunctionBackend(lambda m: "Final answer: 391", name="r")]),
    ]
    router = Router(RouterConfig(top_k=1), encoder=HashingEncoder())
    async with Pipeline(experts, router=router) as pipeline:
        result = await pipeline.run("Write a Python function that reverses a string")
    assert result.text

anyio.run(main)
"""


def _run_script(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


class TestSilentByDefault:
    @pytest.mark.slow
    def test_a_script_on_the_default_pipeline_prints_nothing(self) -> None:
        """Building the offline default, routing and answering writes nothing to stdout or stderr."""
        out = _run_script(
            """
            import anyio
            from moe_agents import default_config_path, load_pipeline

            async def main() -> None:
                async with load_pipeline(default_config_path()) as pipeline:
                    selection = await pipeline.route("Write a Python function that reverses a string")
                    result = await pipeline.run("What is the capital of France?")
                assert selection.experts == ("coding",), selection.experts
                assert result.text.strip()

            anyio.run(main)
            """,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout == ""
        assert out.stderr == ""

    def test_a_script_with_a_tiny_pipeline_prints_nothing(self) -> None:
        """A pipeline run logs info events, yet an unconfigured application sees none of them."""
        out = _run_script(_TINY_PIPELINE, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert (out.stdout, out.stderr) == ("", "")

    def test_basic_config_shows_the_events(self) -> None:
        """logging.basicConfig(level=INFO) shows the library's events on stderr, by logger name."""
        out = _run_script("import logging\nlogging.basicConfig(level=logging.INFO)\n" + _TINY_PIPELINE, 120)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout == ""
        assert "moe_agents.routing.router" in out.stderr and "route.selected" in out.stderr
        assert "pipeline.finished" in out.stderr


class TestLevels:
    def test_disabled_events_run_no_processor(self) -> None:
        """Below the stdlib logger's level, an event costs no processing at all."""
        seen: list[str] = []

        def spy(_logger: object, _method: str, event_dict: dict) -> dict:
            seen.append(event_dict["event"])
            raise structlog.DropEvent

        structlog.configure(processors=[spy])
        library = logging.getLogger("moe_agents")
        log = get_logger("moe_agents.test_levels")
        library.setLevel(logging.WARNING)
        log.info("quiet.info")
        log.debug("quiet.debug")
        log.warning("loud.warning")
        library.setLevel(logging.DEBUG)
        log.info("loud.info")
        assert seen == ["loud.warning", "loud.info"]
