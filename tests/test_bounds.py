"""Each setting's bounds are stated once, on its frozen dataclass: code and YAML reject the same values."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import pytest
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import ValidationError

from moe_agents import ConfigError
from moe_agents.bounds import bounds
from moe_agents.config import spec

# section spec → the frozen config whose fields it derives (the fields both have)
SECTIONS = [
    ("RetrySpec", "moe_agents.reliability", "RetryPolicy"),
    ("CircuitSpec", "moe_agents.reliability", "BreakerPolicy"),
    ("LimitsSpec", "moe_agents.inputs", "InputLimits"),
    ("BudgetSpec", "moe_agents.budget", "BudgetConfig"),
    ("ContextSpec", "moe_agents.routing.context", "ContextConfig"),
    ("TrustSpec", "moe_agents.routing.permission", "SelectConfig"),
    ("MemorySpec", "moe_agents.memory", "MemoryConfig"),
    ("RouterSpec", "moe_agents.routing", "RouterConfig"),
    ("ResourcesSpec", "moe_agents.residency", "ResidencyConfig"),
    ("ManagementSpec", "moe_agents.management.manager", "ManagementConfig"),
    ("ABTestSpec", "moe_agents.management", "ABTest"),
    ("RankingSpec", "moe_agents.management", "RankingWeights"),
    ("ScalingSpec", "moe_agents.management", "ScalingPolicy"),
    ("HealthSpec", "moe_agents.management", "HealthPolicy"),
    ("ExpertSpec", "moe_agents.experts", "ExpertPolicy"),
]


def _outside(bound: Any) -> Any:
    """A value just outside ``bound``."""
    if isinstance(bound, Ge):
        return bound.ge - 1
    if isinstance(bound, Gt):
        return bound.gt
    if isinstance(bound, Le):
        return bound.le + 1
    if isinstance(bound, Lt):
        return bound.lt
    assert isinstance(bound, MinLen)
    return ""


def _cases() -> list[tuple[str, type, str, Any]]:
    cases = []
    for spec_name, module, config_name in SECTIONS:
        config = getattr(importlib.import_module(module), config_name)
        schema = getattr(spec, spec_name)
        for name, found in bounds(config).items():
            if name in schema.model_fields:
                cases.extend((spec_name, config, name, _outside(b)) for b in found)
    return cases


CASES = _cases()


class TestOneStatementOfEachBound:
    def test_the_sections_have_bounded_fields(self) -> None:
        """The derived sections carry bounds (the walk below is not empty)."""
        assert len({c[0] for c in CASES}) >= 10 and len(CASES) >= 30

    @pytest.mark.parametrize(
        ("spec_name", "config", "name", "value"), CASES, ids=[f"{c[0]}.{c[2]}={c[3]!r}" for c in CASES]
    )
    def test_yaml_and_code_reject_the_same_value(
        self, spec_name: str, config: type, name: str, value: Any
    ) -> None:
        """A value outside a field's bound fails the YAML section at that key and the dataclass in code."""
        schema = getattr(spec, spec_name)
        required = {"kind": "coding", "name": "x", "control": "a", "treatment": "b"}
        keys = schema.model_fields
        data = {k: v for k, v in required.items() if k in keys and keys[k].is_required()} | {name: value}
        with pytest.raises(ValidationError) as info:
            schema.model_validate(data)
        assert info.value.errors()[0]["loc"] == (name,)
        needed = {"budget_bytes": 1, "name": "t", "control": "a", "treatment": "b"}
        fields = {f.name for f in dataclasses.fields(config)}
        with pytest.raises(ConfigError, match=name):
            config(**{k: v for k, v in needed.items() if k in fields} | {name: value})
