"""The YAML of Ray placement, checked without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_agents import load_pipeline
from moe_agents.errors import ConfigError


def test_placement_without_ray_is_a_located_error(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "backends:\n  b:\n    kind: replay\n    dataset: mmlu\n    model: mixtral-8x7b\n"
        "    placement: {replicas: 2}\nexperts:\n  - {kind: reasoning, name: r, backends: [b]}\n"
    )
    with pytest.raises(ConfigError, match="needs a top-level `ray:` section") as err:
        load_pipeline(config)
    assert err.value.line == 6 and err.value.key == "backends.b.placement"


def test_a_bad_placement_is_a_located_error(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "ray: {address: local}\n"
        "backends:\n  b:\n    kind: replay\n    dataset: mmlu\n    model: mixtral-8x7b\n"
        "    placement: {replicas: 0}\nexperts:\n  - {kind: reasoning, name: r, backends: [b]}\n"
    )
    with pytest.raises(ConfigError, match="greater than or equal to 1") as err:
        load_pipeline(config)
    assert err.value.key == "backends.b.placement.replicas"


class TestLocalStart:
    """A local cluster whose raylet misses Ray's fixed 30 s registration window is started again;
    any other start error is raised at once. (Ray's own calls are replaced: no cluster starts.)"""

    @pytest.fixture
    def calls(self, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        ray = pytest.importorskip("ray")
        calls: list[str] = []
        monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
        return calls

    def _start(self, monkeypatch: pytest.MonkeyPatch, calls: list[str], errors: list[Exception]) -> None:
        import ray

        from moe_agents.cluster.runtime import _start_local
        from moe_agents.cluster.settings import RayConfig

        def init(**kwargs: object) -> None:
            calls.append(f"init {kwargs['address']}")
            if errors:
                raise errors.pop(0)

        monkeypatch.setattr(ray, "init", init)
        _start_local(RayConfig(num_cpus=2))

    def test_a_start_up_timeout_is_retried_after_a_shutdown(
        self, monkeypatch: pytest.MonkeyPatch, calls: list[str]
    ) -> None:
        timeout = Exception("The current node timed out during startup. This could happen ...")
        self._start(monkeypatch, calls, [timeout])
        assert calls == ["init local", "shutdown", "init local"]

    def test_other_errors_and_the_last_timeout_are_raised(
        self, monkeypatch: pytest.MonkeyPatch, calls: list[str]
    ) -> None:
        with pytest.raises(ValueError, match="bad"):
            self._start(monkeypatch, calls, [ValueError("bad")])
        assert calls == ["init local"]
        calls.clear()
        timeouts = [Exception("timed out during startup") for _ in range(3)]
        with pytest.raises(Exception, match="timed out during startup"):
            self._start(monkeypatch, calls, timeouts)
        assert calls.count("init local") == 3 and calls.count("shutdown") == 2
