"""The evaluation data folder: given, or named by MOE_AGENTS_EVAL_DATA, never assumed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_agents import default_config_path, load_pipeline
from moe_agents.cli import app
from moe_agents.errors import ConfigError
from moe_agents.eval_data import EVAL_DATA_ENV, eval_data_dir
from moe_agents.evaluation.data import routing_fit_set, routing_test_set
from moe_agents.recorded import load_gsm8k_recorded, load_mmlu

RECORDED_CONFIG = default_config_path().parent / "recorded-gsm8k.yaml"
NEITHER = r"--data.*data_dir.*MOE_AGENTS_EVAL_DATA"


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVAL_DATA_ENV, raising=False)


class TestEvalDataDir:
    def test_argument_wins_over_the_variable(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """A folder given explicitly is used even when the variable names another."""
        monkeypatch.setenv(EVAL_DATA_ENV, str(tmp_path / "env"))
        assert eval_data_dir(tmp_path / "arg") == tmp_path / "arg"
        assert eval_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"

    def test_variable_when_no_argument(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without an argument the folder is $MOE_AGENTS_EVAL_DATA."""
        monkeypatch.setenv(EVAL_DATA_ENV, str(tmp_path))
        assert eval_data_dir(None) == tmp_path

    def test_neither_is_a_config_error_naming_both(self, no_env: None) -> None:
        """With no folder and no variable, the error says how to give one either way."""
        with pytest.raises(ConfigError, match=NEITHER):
            eval_data_dir(None)

    def test_empty_variable_counts_as_unset(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An empty MOE_AGENTS_EVAL_DATA is no folder (not the working directory)."""
        monkeypatch.setenv(EVAL_DATA_ENV, "")
        with pytest.raises(ConfigError, match=NEITHER):
            eval_data_dir(None)


class TestReadersWithoutAFolder:
    @pytest.mark.parametrize(
        "read",
        [load_mmlu, load_gsm8k_recorded, routing_test_set, routing_fit_set],
        ids=["mmlu", "gsm8k", "routing-test", "routing-fit"],
    )
    def test_reader_without_folder(self, read, no_env: None) -> None:
        """Every data reader called without a folder and without the variable raises the ConfigError."""
        with pytest.raises(ConfigError, match=NEITHER):
            read()

    @pytest.mark.parametrize("read", [load_mmlu, load_gsm8k_recorded], ids=["mmlu", "gsm8k"])
    def test_reader_follows_the_variable(self, read, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        """Without an argument the readers look in $MOE_AGENTS_EVAL_DATA (here an empty folder)."""
        monkeypatch.setenv(EVAL_DATA_ENV, str(tmp_path))
        with pytest.raises(ConfigError, match="evaluation data not found") as info:
            read()
        assert info.value.path is not None and info.value.path.startswith(str(tmp_path))

    def test_replay_config_without_folder(self, no_env: None) -> None:
        """A replay backend in YAML with no data_dir and no variable fails to load, located and explained."""
        with pytest.raises(ConfigError, match=NEITHER) as info:
            load_pipeline(RECORDED_CONFIG)
        assert "backends" in str(info.value)

    def test_cli_eval_without_folder(self, no_env: None) -> None:
        """`eval recorded` without --data and without the variable exits 1 with the one-line error."""
        result = CliRunner().invoke(app, ["eval", "recorded"], env={EVAL_DATA_ENV: None})
        assert result.exit_code == 1
        assert EVAL_DATA_ENV in result.output and "--data" in result.output
        assert "Traceback" not in result.output
