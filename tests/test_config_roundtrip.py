"""Every router setting is reachable from YAML and arrives on the object it configures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from moe_agents import ConfigError, load_pipeline
from moe_agents.config import RouterSpec
from moe_agents.residency import GB
from moe_agents.routing import RouterConfig
from moe_agents.routing.context import ContextConfig
from moe_agents.routing.crossval import CVConfig
from moe_agents.routing.gates import GateConfig
from moe_agents.routing.momentum import MomentumConfig
from moe_agents.routing.permission import SelectConfig
from moe_agents.routing.tuning import TuningConfig

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
    "tune": "on",
    "encoder_runtime": "onnx",
}
NESTED = {
    "gate": ("kind", "centroid"),
    "momentum": ("cap", 0.2),
    "tuning": ("epochs", 2),
    "cv": ("folds", 4),
}

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

    @pytest.mark.parametrize(
        ("section", "kind"),
        [("gate", GateConfig), ("momentum", MomentumConfig), ("tuning", TuningConfig), ("cv", CVConfig)],
    )
    def test_nested_settings_arrive(self, tmp_path: Path, section: str, kind: type) -> None:
        """router.gate, .momentum, .tuning and .cv become their frozen configs."""
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


# section spec → the frozen config it builds, and how its keys are named there when they differ
MIRRORS = [
    ("RetrySpec", "moe_agents.reliability", "RetryPolicy", {}),
    ("CircuitSpec", "moe_agents.reliability", "BreakerPolicy", {}),
    ("LimitsSpec", "moe_agents.inputs", "InputLimits", {}),
    ("ContextSpec", "moe_agents.routing.context", "ContextConfig", {}),
    ("BudgetSpec", "moe_agents.budget", "BudgetConfig", {}),
    ("TrustSpec", "moe_agents.routing.permission", "SelectConfig", {}),
    ("MemorySpec", "moe_agents.memory", "MemoryConfig", {}),
    (
        "ResourcesSpec",
        "moe_agents.residency",
        "ResidencyConfig",
        # budget_bytes and bandwidth are given in GB in YAML; hysteresis is trust's (one value)
        {"budget_bytes": "memory_budget_gb", "bandwidth_bytes_per_s": "bandwidth_gb_s", "hysteresis": None},
    ),
]


def _default(f: dataclasses.Field[object]) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


class TestSchemaMatchesTheDataclasses:
    @pytest.mark.parametrize(
        ("spec_name", "module", "config_name", "renamed"), MIRRORS, ids=[m[0] for m in MIRRORS]
    )
    def test_every_field_is_settable_with_the_same_default(
        self, spec_name: str, module: str, config_name: str, renamed: dict[str, str | None]
    ) -> None:
        """Each field of the frozen config has its YAML key, and the key's default is the field's."""
        import importlib

        from moe_agents.config import spec

        schema = getattr(spec, spec_name)
        config = getattr(importlib.import_module(module), config_name)
        for f in dataclasses.fields(config):
            key = renamed.get(f.name, f.name)
            if key is None:
                continue
            assert key in schema.model_fields, f"{config_name}.{f.name} cannot be set from YAML"
            default, yaml_default = _default(f), schema.model_fields[key].default
            if default is dataclasses.MISSING:
                continue  # a required field (the residency budget): no default to agree on
            if f.name == "bandwidth_bytes_per_s":
                yaml_default = yaml_default * GB
            if isinstance(yaml_default, list):
                yaml_default = tuple(yaml_default)
            expected = pytest.approx(default) if isinstance(default, float) else default
            assert yaml_default == expected, f.name
