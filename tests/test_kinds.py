"""One plugin contract: expert kinds and aggregation strategies declare their YAML options as a
model in the registry, like backend kinds; YAML options are validated by it, with located errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import Field

from moe_agents import ConfigError, LLMExpert, load_pipeline
from moe_agents.kinds import BUILTIN_AGGREGATOR_KINDS, ExpertKind, ExpertOptions
from moe_agents.registry import Registry


@dataclass(eq=False, repr=False, kw_only=True)
class Styled(LLMExpert):
    kind = "styled"
    style: str = "plain"
    width: int = 80


class StyledOptions(ExpertOptions):
    style: str = "plain"
    width: int = Field(default=80, ge=10)


def _registry() -> Registry:
    reg = Registry()
    reg.experts.add("styled", ExpertKind(Styled, StyledOptions))
    reg.experts.add("plain", ExpertKind(Styled))
    for name in ("weighted", "voting"):
        reg.aggregators.add(name, BUILTIN_AGGREGATOR_KINDS[name])
    return reg


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return load_pipeline(path, registry=_registry())


class TestExpertKinds:
    def test_declared_options_arrive_and_the_rest_keep_the_class_defaults(self, tmp_path: Path) -> None:
        """Options YAML sets reach the expert; those it leaves out are the class's defaults."""
        pipeline = _load(tmp_path, "experts:\n  - {name: a, kind: styled, options: {style: terse}}\n")
        expert = pipeline.experts["a"]  # type: ignore[attr-defined]
        assert (expert.style, expert.width) == ("terse", 80)

    @pytest.mark.parametrize(
        ("options", "key", "message"),
        [
            ("{colour: red}", "experts.0.options.colour", "its options: ['style', 'width']"),
            ("{width: 3}", "experts.0.options.width", "greater than or equal to 10"),
            ("{width: wide}", "experts.0.options.width", "valid integer"),
        ],
        ids=["unknown", "out-of-range", "wrong-type"],
    )
    def test_bad_options_are_located_errors(
        self, tmp_path: Path, options: str, key: str, message: str
    ) -> None:
        """An unknown, out-of-range or mistyped option is a ConfigError at its line and key."""
        with pytest.raises(ConfigError) as info:
            _load(tmp_path, f"experts:\n  - name: a\n    kind: styled\n    options: {options}\n")
        assert (info.value.line, info.value.key) == (4, key)
        assert message in info.value.message

    def test_a_kind_without_options_says_so(self, tmp_path: Path) -> None:
        """A kind registered without an options model accepts none."""
        with pytest.raises(ConfigError, match="it takes no options") as info:
            _load(tmp_path, "experts:\n  - name: a\n    kind: plain\n    options: {style: terse}\n")
        assert info.value.key == "experts.0.options.style"


class TestAggregatorKinds:
    def test_declared_options_arrive(self, tmp_path: Path) -> None:
        """aggregation.options are validated by the strategy's model and reach the aggregator."""
        pipeline = _load(
            tmp_path,
            "aggregation: {strategy: voting, options: {key: number}}\nexperts:\n  - {name: a, kind: plain}\n",
        )
        assert pipeline.aggregator.key == "number"  # type: ignore[attr-defined]

    def test_unknown_option_names_the_valid_ones(self, tmp_path: Path) -> None:
        """An option the strategy does not declare is an error at its key listing the valid ones."""
        with pytest.raises(ConfigError, match=r"its options: \['key', 'weighted'\]") as info:
            _load(
                tmp_path,
                "aggregation:\n  strategy: voting\n  options: {quorum: 2}\n"
                "experts:\n  - {name: a, kind: plain}\n",
            )
        assert (info.value.line, info.value.key) == (3, "aggregation.options.quorum")
