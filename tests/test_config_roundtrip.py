"""Every router setting is reachable from YAML and arrives on the object it configures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from moe_agents import ConfigError, load_pipeline
from moe_agents.config import RouterSpec
from moe_agents.routing import RouterConfig
from moe_agents.routing.context import ContextConfig
from moe_agents.routing.gates import GateConfig
from moe_agents.routing.momentum import MomentumConfig
from moe_agents.routing.permission import SelectConfig

SECTIONS = {"selection": "trust", "context": "trust.context", "seed": "trust.seed"}
"""RouterConfig fields that YAML sets outside ``router:`` (trust-first ranking lives with trust)."""

# a value other than the default for every scalar router setting
CHANGED = {
    "top_k": 2,
    "min_confidence": 0.25,
    "gate_weight": 0.3,
    "fallback_expert": "reasoning",
    "overload_penalty": 0.2,
    "assess_top": 5,
    "cache_size": 7,
    "batch_window_s": 0.01,
    "max_batch": 3,
    "gate_cache_dir": "",
}
NESTED = {"gate": ("kind", "centroid"), "momentum": ("cap", 0.2)}

PIPELINE = """\
router:
{router}
experts:
  - {{name: coding, kind: coding, exemplars: [write a python function, fix this bug]}}
  - {{name: reasoning, kind: reasoning, exemplars: [solve this equation, what is 12 times 7]}}
"""


def _load(tmp_path: Path, router: dict[str, object]) -> RouterConfig:
    """The RouterConfig of a pipeline whose router: section sets ``router`` (values as JSON, which
    is YAML too)."""
    lines = "\n".join(f"  {key}: {json.dumps(value)}" for key, value in router.items())
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(router=lines), encoding="utf-8")
    return load_pipeline(path).router.config


class TestRouterRoundTrip:
    def test_every_router_field_has_a_yaml_key(self) -> None:
        """Each RouterConfig field is a key of router: or of the trust section; none is unreachable."""
        router_keys = set(RouterSpec.model_fields)
        fields = {f.name for f in dataclasses.fields(RouterConfig)}
        assert fields - router_keys - set(SECTIONS) == set()
        assert set(CHANGED) | set(NESTED) == fields - set(SECTIONS)

    def test_yaml_defaults_are_the_dataclass_defaults(self) -> None:
        """A router: section that sets nothing gives RouterConfig's own defaults."""
        defaults = RouterConfig()
        spec = RouterSpec()
        for name in CHANGED:
            assert getattr(spec, name) == getattr(defaults, name), name

    def test_every_scalar_setting_arrives(self, tmp_path: Path) -> None:
        """Each router key set in YAML is the value on the pipeline's RouterConfig."""
        config = _load(tmp_path, CHANGED)
        for name, value in CHANGED.items():
            assert getattr(config, name) == value, name

    @pytest.mark.parametrize(("section", "kind"), [("gate", GateConfig), ("momentum", MomentumConfig)])
    def test_nested_settings_arrive(self, tmp_path: Path, section: str, kind: type) -> None:
        """router.gate and router.momentum become their frozen configs."""
        key, value = NESTED[section]
        config = _load(tmp_path, {section: {key: value}})
        assert isinstance(getattr(config, section), kind)
        assert getattr(getattr(config, section), key) == value

    def test_trust_sections_arrive(self, tmp_path: Path) -> None:
        """trust: sets the selection, the trust context and the exploration seed."""
        path = tmp_path / "p.yaml"
        path.write_text(
            PIPELINE.format(router="  top_k: 1")
            + "trust: {path: ':memory:', epsilon: 0.1, seed: 3, context: {kind: global}}\n",
            encoding="utf-8",
        )
        config = load_pipeline(path).router.config
        assert isinstance(config.selection, SelectConfig) and config.selection.epsilon == 0.1
        assert isinstance(config.context, ContextConfig) and config.context.kind == "global"
        assert config.seed == 3

    def test_out_of_range_values_name_the_key(self, tmp_path: Path) -> None:
        """A bad router value is a located ConfigError naming its key."""
        with pytest.raises(ConfigError, match="overload_penalty"):
            _load(tmp_path, {"overload_penalty": 2.0})
        with pytest.raises(ConfigError, match="max_batch"):
            _load(tmp_path, {"max_batch": 0})
