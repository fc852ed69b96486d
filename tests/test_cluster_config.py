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
