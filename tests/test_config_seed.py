"""The seed plan's `moe:` YAML shape: it loads as written, maps onto today's keys, and its mistakes
are located errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from moe_agents import ConfigError, LiteLLMBackend, load_pipeline
from moe_agents.config import default_config_path
from moe_agents.resources import BUNDLED_ENCODER

SEED_PLAN = default_config_path().parent / "seed-plan.yaml"

SEED = """\
moe:
  enabled: true
  router:
    type: heuristic
    model: no-encoder
    top_k: 1
  aggregation:
    strategy: ensemble
    synthesis_model: gpt-4o-mini
  experts:
    - name: CodingExpert
      models: [gpt-4o-mini, claude-3-haiku-20240307]
      max_instances: 3
    - name: ReasoningExpert
      models: [gpt-4o]
      max_instances: 2
  management:
    auto_scale: true
    performance_threshold: 0.7
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "no-encoder").mkdir(exist_ok=True)  # a folder with no model in it
    path = tmp_path / "seed.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


class TestSeedPlan:
    async def test_routes_a_coding_query_without_calling_a_model(self) -> None:
        """The shipped seed plan loads as written and routes a coding query to the coding expert
        (network is blocked: a backend call would fail the route)."""
        pipeline = load_pipeline(SEED_PLAN)
        selection = await pipeline.route("Write a Python function that reverses a linked list")
        assert selection.experts[0] == "coding"
        assert "synthesis" not in selection.experts
        assert all(isinstance(b, LiteLLMBackend) for b in pipeline.backends)

    def test_seed_keys_map_to_todays(self) -> None:
        """Router, aggregation, experts, models and management map onto today's options."""
        with capture_logs() as logs:
            pipeline = load_pipeline(SEED_PLAN)
        router = pipeline.router
        assert (router.config.top_k, router.config.min_confidence, router.config.gate_weight) == (2, 0.3, 0.6)
        assert router.encoder.name == BUNDLED_ENCODER
        events = {e["event"]: e for e in logs}
        assert events["config.encoder_bundled"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        assert list(pipeline.experts) == [
            "coding",
            "reasoning",
            "knowledge",
            "epistemic",
            "omni",
            "synthesis",
        ]
        assert type(pipeline.experts["omni"]).__name__ == "OmniExpert"
        assert getattr(pipeline.aggregator, "synthesis_expert", None) == "synthesis"
        assert pipeline.disabled == {"synthesis"}
        assert sorted(b.model for b in pipeline.backends if isinstance(b, LiteLLMBackend)) == [
            "claude-3-haiku-20240307",
            "gpt-4o",
            "gpt-4o-mini",
        ]
        assert pipeline.manager is not None
        m = pipeline.manager.config
        assert (m.auto_scale, m.remove_underperforming) == (True, True)
        assert (m.scaling.performance_threshold, m.scaling.max_instances) == (0.7, 2)
        assert events["config.seed_max_instances"]["given"] == [3, 2, 2, 2, 2]
        assert events["config.seed_max_instances"]["log_level"] == "warning"

    def test_same_model_id_is_one_shared_backend(self, tmp_path: Path) -> None:
        """Experts naming the same model id (and the synthesis model) share one backend object."""
        pipeline = load_pipeline(write(tmp_path, SEED))
        coding, synthesis = pipeline.experts["coding"], pipeline.experts["synthesis"]
        assert coding.backends[0] is synthesis.backends[0]  # type: ignore[attr-defined]
        assert len(pipeline.backends) == 3

    def test_model_id_may_name_a_backend(self, tmp_path: Path) -> None:
        """A model id that names a backend under `backends:` uses it (here: one that takes images)."""
        text = SEED + "  backends:\n    gpt-4o: {kind: litellm, model: openai/gpt-4o, modalities: [image]}\n"
        pipeline = load_pipeline(write(tmp_path, text))
        models = {b.model: b for b in pipeline.backends if isinstance(b, LiteLLMBackend)}
        assert sorted(models) == ["claude-3-haiku-20240307", "gpt-4o-mini", "openai/gpt-4o"]
        assert models["openai/gpt-4o"].modalities == {"image"}


class TestHeuristic:
    async def test_routes_by_self_assessment_without_gate_or_encoder(self, tmp_path: Path) -> None:
        """`type: heuristic` fits no gate and never loads the encoder (an empty folder here, which
        would fail to load): the choice is the experts' self-assessment."""
        pipeline = load_pipeline(write(tmp_path, SEED))
        assert pipeline.router.config.gate_weight == 0.0
        selection = await pipeline.route("Fix this Python traceback: IndexError in my loop")
        assert selection.experts == ("coding",)
        assert pipeline.router.gate is None
        coding, reasoning = selection.scores["coding"], selection.scores["reasoning"]
        assert coding.self_assessment is not None and reasoning.self_assessment is not None
        assert coding.self_assessment > reasoning.self_assessment

    def test_neural_is_todays_gate(self, tmp_path: Path) -> None:
        """`type: neural` keeps today's gate weight and exemplars."""
        pipeline = load_pipeline(write(tmp_path, SEED.replace("heuristic", "neural")))
        assert pipeline.router.config.gate_weight == 0.6
        assert pipeline.experts["coding"].exemplars


def _replace(old: str, new: str) -> str:
    assert old in SEED
    return SEED.replace(old, new)


BAD = [
    ("disabled", _replace("enabled: true", "enabled: false"), 2, "moe.enabled", "the pipeline is disabled"),
    (
        "top-level-beside-moe",
        SEED + "extras: {}\n",
        20,
        "extras",
        "unknown key 'extras' at the top level: with the seed plan's `moe:` shape",
    ),
    ("top-level-neither", "foo: 1\nbar: 2\n", 1, "foo", "unknown key 'foo' at the top level"),
    ("todays-key-beside-moe", SEED + "experts: []\n", 20, "experts", "every key goes inside `moe:`"),
    (
        "unknown-expert",
        _replace("CodingExpert", "WizardExpert"),
        11,
        "moe.experts.0.name",
        "unknown expert 'WizardExpert'; known: ['CodingExpert', 'EpistemicExpert', 'KnowledgeExpert', "
        "'OmniExpert', 'ReasoningExpert']",
    ),
    (
        "hub-encoder-not-offline",
        _replace("no-encoder", "acme/no-such-encoder"),
        5,
        "moe.router.model",
        "encoder 'acme/no-such-encoder' is not available offline",
    ),
    (
        "unknown-router-type",
        _replace("heuristic", "quantum"),
        4,
        "moe.router.type",
        "known: ['heuristic', 'neural']",
    ),
    (
        "heuristic-with-gate",
        _replace("top_k: 1", "top_k: 1\n    gate_weight: 0.5"),
        7,
        "moe.router.gate_weight",
        "fits no gate",
    ),
    (
        "max-instances",
        _replace("max_instances: 3", "max_instances: 0"),
        13,
        "moe.experts.0.max_instances",
        ">= 1",
    ),
    (
        "kind-in-seed-expert",
        _replace("    - name: ReasoningExpert", "    - name: ReasoningExpert\n      kind: reasoning"),
        15,
        "moe.experts.1.kind",
        "named by its class",
    ),
    (
        "todays-validation",
        _replace("top_k: 1", "top_k: 0"),
        6,
        "moe.router.top_k",
        "greater than or equal to 1",
    ),
    (
        "todays-unknown-key",
        _replace("  enabled: true", "  enabled: true\n  routr: {}"),
        3,
        "moe.routr",
        "unknown key 'routr'",
    ),
    ("todays-build", _replace("top_k: 1", "top_k: 9"), 6, "moe.router.top_k", "only 2 experts"),
    (
        "expert-option",
        _replace("max_instances: 2", "max_instances: 2\n      max_load: lots"),
        17,
        "moe.experts.1.max_load",
        "integer",
    ),
    ("no-experts", "moe:\n  router: {top_k: 1}\n", 1, "moe.experts", "missing required key 'experts'"),
]


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "line", "key", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
    )
    def test_error_names_file_line_and_key_as_written(
        self, tmp_path: Path, text: str, line: int, key: str, message: str
    ) -> None:
        """A mistake in the seed shape is one ConfigError naming the file, the line and the key path
        as written in the file, with a clear message."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_pipeline(path)
        err = info.value
        assert (err.path, err.line, err.key) == (str(path), line, key), str(err)
        assert message in err.message
