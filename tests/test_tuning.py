"""Few-shot encoder tuning (routing.tuning), cross-validated settings (routing.crossval) and how the
router uses both: determinism, caching, cache keys, saved folders, choices and bad settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from structlog.testing import capture_logs

from moe_agents import ConfigError, LLMExpert, Query, Router, RouterConfig
from moe_agents.resources import BUNDLED_ENCODER, resolve_path
from moe_agents.routing.crossval import CVConfig, choose, stratified_folds, temper
from moe_agents.routing.encoder import SentenceEncoder
from moe_agents.routing.gates import GateConfig, gate_fingerprint
from moe_agents.routing.tuning import (
    TUNED_MARKER,
    TuningConfig,
    find_fitted,
    save_fitted,
    tune_encoder,
    tuned_encoder_folder,
    tuning_fingerprint,
)

EXEMPLARS = {
    "code": [
        "write a python function to sort a list",
        "fix this javascript bug in my loop",
        "refactor the class to use an interface",
        "why does my rust code not compile",
    ],
    "math": [
        "solve the equation two x plus three equals nine",
        "what is the derivative of x squared",
        "compute the probability of two heads",
        "prove that the sum of angles is one hundred eighty",
    ],
    "chat": [
        "hello how are you today",
        "thank you so much for the help",
        "good night and see you tomorrow",
        "what is your favourite colour",
    ],
}
FAST = TuningConfig(epochs=2, batch_size=6, lr=1e-3, train_layers=0, max_length=16)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT built from a config, with the bundled encoder's tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(BUNDLED_ENCODER))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def separation(encoder: SentenceEncoder) -> float:
    """Mean cosine within an expert's exemplars minus mean cosine across experts."""
    texts = [t for ts in EXEMPLARS.values() for t in ts]
    labels = np.array([i for i, ts in enumerate(EXEMPLARS.values()) for _ in ts])
    x = encoder.encode(texts)
    sims = x @ x.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(texts), dtype=bool)
    return float(sims[same & off].mean() - sims[~same].mean())


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs",
        [{"epochs": 0}, {"batch_size": 1}, {"lr": 0.0}, {"temperature": -1.0}, {"train_layers": -1}],
        ids=["epochs", "batch_size", "lr", "temperature", "train_layers"],
    )
    def test_bad_tuning_settings_are_config_errors(self, kwargs: dict[str, float]) -> None:
        """Out-of-range tuning settings are rejected, naming the section."""
        with pytest.raises(ConfigError, match="tuning"):
            TuningConfig(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "kwargs",
        [{"folds": 1}, {"gate_weights": (1.5,)}, {"temperature_scales": (0.0,)}, {"kinds": ("forest",)}],
        ids=["folds", "weights", "scales", "kinds"],
    )
    def test_bad_cv_settings_are_config_errors(self, kwargs: dict[str, object]) -> None:
        """Out-of-range cross-validation settings are rejected, naming the section."""
        with pytest.raises(ConfigError, match="cv"):
            CVConfig(**kwargs)  # type: ignore[arg-type]

    def test_unknown_tune_mode_is_a_config_error(self) -> None:
        """router.tune takes auto, on or off only."""
        with pytest.raises(ConfigError, match="tune"):
            RouterConfig(tune="sometimes")  # type: ignore[arg-type]

    def test_too_many_train_layers_is_a_config_error(self, tiny_bert: Path, tmp_path: Path) -> None:
        """Training more layers than the encoder has says how many it has."""
        with pytest.raises(ConfigError, match="2 layers"):
            tune_encoder(tiny_bert, EXEMPLARS, TuningConfig(train_layers=3), tmp_path / "out")

    def test_one_expert_cannot_be_tuned_for(self, tiny_bert: Path, tmp_path: Path) -> None:
        """Contrastive tuning needs at least two experts' exemplars."""
        with pytest.raises(ConfigError, match="two experts"):
            tune_encoder(tiny_bert, {"code": EXEMPLARS["code"]}, FAST, tmp_path / "out")


class TestTuneEncoder:
    def test_same_seed_same_weights_other_seed_other_weights(self, tiny_bert: Path, tmp_path: Path) -> None:
        """Tuning is seeded: the same seed gives identical weights, another seed different ones."""
        runs = {}
        for name, seed in (("a", 0), ("b", 0), ("c", 1)):
            tune_encoder(
                tiny_bert, EXEMPLARS, TuningConfig(**{**_fields(FAST), "seed": seed}), tmp_path / name
            )
            runs[name] = weights(tmp_path / name)
        assert runs["a"].keys() == runs["b"].keys()
        assert all(np.array_equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
        assert any(not np.array_equal(runs["a"][k], runs["c"][k]) for k in runs["a"])

    def test_tuning_pulls_each_experts_exemplars_together(self, tiny_bert: Path, tmp_path: Path) -> None:
        """After tuning, an expert's exemplars are closer to each other than to other experts' —
        more so than before."""
        history = tune_encoder(tiny_bert, EXEMPLARS, TuningConfig(**{**_fields(FAST), "epochs": 8}), tmp_path)
        assert separation(SentenceEncoder(tmp_path)) > separation(SentenceEncoder(tiny_bert)) + 0.05
        assert history["losses"][-1] < history["losses"][0]

    def test_frozen_layers_keep_their_weights(self, tiny_bert: Path, tmp_path: Path) -> None:
        """With train_layers: 1 only the top layer changes; embeddings and the layer below stay."""
        tune_encoder(tiny_bert, EXEMPLARS, TuningConfig(**{**_fields(FAST), "train_layers": 1}), tmp_path)
        before, after = weights(tiny_bert), weights(tmp_path)
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        assert changed and all(".layer.1." in k for k in changed)

    def test_the_tuned_folder_is_a_plain_hf_folder(self, tiny_bert: Path, tmp_path: Path) -> None:
        """The saved folder loads with SentenceEncoder and gives unit vectors of the base's size."""
        folder = tuned_encoder_folder(tiny_bert, "tiny", EXEMPLARS, FAST, tmp_path)
        assert {"config.json", "model.safetensors", "tokenizer.json", TUNED_MARKER} <= {
            p.name for p in folder.iterdir()
        }
        vectors = SentenceEncoder(folder).encode(["hello", "solve x"])
        assert vectors.shape == (2, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        meta = json.loads((folder / TUNED_MARKER).read_text())
        assert meta["base"] == "tiny" and meta["fingerprint"] == tuning_fingerprint("tiny", EXEMPLARS, FAST)


class TestCache:
    def test_a_second_call_reuses_the_tuned_folder(self, tiny_bert: Path, tmp_path: Path) -> None:
        """The second call for the same inputs trains nothing and returns the same folder."""
        steps: list[int] = []
        first = tuned_encoder_folder(
            tiny_bert, "tiny", EXEMPLARS, FAST, tmp_path, progress=lambda s, _: steps.append(s)
        )
        trained = len(steps)
        second = tuned_encoder_folder(
            tiny_bert, "tiny", EXEMPLARS, FAST, tmp_path, progress=lambda s, _: steps.append(s)
        )
        assert trained > 0 and len(steps) == trained
        assert first == second

    @pytest.mark.parametrize(
        "change",
        ["exemplar", "expert", "setting", "base"],
    )
    def test_the_key_changes_with_what_tuning_depends_on(self, change: str) -> None:
        """The tuning fingerprint changes with an exemplar, an expert, a setting or the base encoder,
        and not with the order experts are listed in."""
        key = tuning_fingerprint("tiny", EXEMPLARS, FAST)
        assert tuning_fingerprint("tiny", dict(reversed(list(EXEMPLARS.items()))), FAST) == key
        other = {
            "exemplar": ("tiny", {**EXEMPLARS, "chat": [*EXEMPLARS["chat"][:-1], "see you"]}, FAST),
            "expert": ("tiny", {**EXEMPLARS, "art": ["paint a cat"]}, FAST),
            "setting": ("tiny", EXEMPLARS, TuningConfig(**{**_fields(FAST), "epochs": 3})),
            "base": ("other", EXEMPLARS, FAST),
        }[change]
        assert tuning_fingerprint(*other) != key

    def test_the_gate_key_includes_the_selection(self) -> None:
        """A gate fitted with tuning or cross-validation is keyed apart from one fitted without."""
        plain = gate_fingerprint("tiny", EXEMPLARS, GateConfig())
        assert gate_fingerprint("tiny", EXEMPLARS, GateConfig(), selection=None) == plain
        tuned = gate_fingerprint("tiny", EXEMPLARS, GateConfig(), selection={"tune": "on"})
        assert tuned != plain
        assert gate_fingerprint("tiny", EXEMPLARS, GateConfig(), selection={"tune": "auto"}) != tuned


class TestCrossValidation:
    def test_folds_are_stratified_and_seeded(self) -> None:
        """Every fold holds each label's share, and the same seed deals the same folds."""
        labels = np.repeat(np.arange(3), 9)
        folds = stratified_folds(labels, 3, seed=4)
        for label in range(3):
            assert np.bincount(folds[labels == label], minlength=3).tolist() == [3, 3, 3]
        assert np.array_equal(folds, stratified_folds(labels, 3, seed=4))
        assert not np.array_equal(folds, stratified_folds(labels, 3, seed=5))

    def test_temper_sharpens_and_flattens(self) -> None:
        """A scale below 1 sharpens the probabilities, above 1 flattens them; rows still sum to 1."""
        p = np.array([[0.6, 0.3, 0.1]])
        assert temper(p, 0.5)[0, 0] > 0.6 > temper(p, 2.0)[0, 0]
        np.testing.assert_allclose(temper(p, 0.5).sum(1), 1.0)

    def test_choose_picks_the_best_candidate_and_records_every_score(self) -> None:
        """The candidate routing the most held-out exemplars right wins; all scores are kept."""
        y = np.array([0, 0, 1, 1])
        allowed = np.ones((4, 2), dtype=bool)
        sa = np.zeros((4, 2))
        good = np.eye(2)[y] * 0.8 + 0.1
        bad = np.eye(2)[1 - y] * 0.8 + 0.1
        cv = choose(
            {("base", "mlp"): bad, ("tuned", "mlp"): good}, sa, y, allowed, CVConfig(gate_weights=(0.5, 1.0))
        )
        assert (cv.encoder, cv.gate, cv.accuracy) == ("tuned", "mlp", 1.0)
        assert cv.scores["base/mlp/w=1/T×1"] == 0.0
        assert len(cv.scores) == 2 * 2 * len(CVConfig().temperature_scales)
        assert cv.best_per(0) == {"base": 0.0, "tuned": 1.0}

    def test_self_assessment_can_win_through_a_lower_gate_weight(self) -> None:
        """When the gate is wrong and self-assessment right, the smallest gate weight wins."""
        y = np.array([0, 1])
        gate = np.array([[0.4, 0.6], [0.6, 0.4]])
        sa = np.array([[1.0, 0.0], [0.0, 1.0]])
        cv = choose({("base", "mlp"): gate}, sa, y, np.ones((2, 2), bool), CVConfig(gate_weights=(1.0, 0.3)))
        assert cv.gate_weight == 0.3 and cv.accuracy == 1.0

    def test_ties_go_to_the_earlier_candidate_and_reported_ones_never_win(self) -> None:
        """Equal scores keep the first candidate; a gate that is not selectable is only reported."""
        y = np.array([0, 1])
        p = np.eye(2)[y]
        oof = {("base", "mlp"): p, ("tuned", "mlp"): p, ("base", "ensemble"): p}
        cv = choose(oof, np.zeros((2, 2)), y, np.ones((2, 2), bool), CVConfig(), selectable=("mlp",))
        assert (cv.encoder, cv.gate) == ("base", "mlp")
        assert any(k.startswith("base/ensemble/") for k in cv.scores)

    def test_the_ensemble_wins_only_by_scoring_higher(self) -> None:
        """Selectable like every kind, the ensemble wins when it routes more exemplars right and
        loses a tie to the simpler gate listed before it."""
        y = np.array([0, 1, 0, 1])
        ok = np.ones((4, 2), bool)
        most = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # 3 of 4
        kinds = ("mlp", "ensemble")
        cv = choose(
            {("base", "mlp"): most, ("base", "ensemble"): np.eye(2)[y]},
            np.zeros((4, 2)),
            y,
            ok,
            CVConfig(),
            selectable=kinds,
        )
        assert (cv.gate, cv.accuracy) == ("ensemble", 1.0)
        cv = choose(
            {("base", "mlp"): most, ("base", "ensemble"): most},
            np.zeros((4, 2)),
            y,
            ok,
            CVConfig(),
            selectable=kinds,
        )
        assert cv.gate == "mlp"

    def test_exemplars_of_media_only_experts_are_not_scored(self) -> None:
        """An exemplar whose expert does not take a text-only query is left out of the accuracy."""
        y = np.array([0, 1])
        allowed = np.array([[True, False], [True, False]])
        cv = choose({("base", "mlp"): np.eye(2)[y]}, np.zeros((2, 2)), y, allowed, CVConfig())
        assert cv.n == 1 and cv.accuracy == 1.0


class Keyword(LLMExpert):
    """An expert whose self-assessment is whether a word of its own appears in the query."""

    def __init__(self, name: str, word: str) -> None:
        super().__init__(name, exemplars=tuple(EXEMPLARS[name]))
        self.word = word

    async def can_handle(self, query: Query) -> float:
        return 1.0 if self.word in query.text else 0.0


def members() -> list[LLMExpert]:
    return [Keyword("code", "python"), Keyword("math", "equation"), Keyword("chat", "hello")]


def router_config(cache: Path, **kwargs: object) -> RouterConfig:
    return RouterConfig(
        gate_cache_dir=str(cache),
        gate=GateConfig(max_epochs=30),
        tuning=FAST,
        cv=CVConfig(folds=2, gate_weights=(0.3, 0.6, 1.0), temperature_scales=(1.0,)),
        **kwargs,  # type: ignore[arg-type]
    )


class TestRouter:
    async def test_tuned_gate_is_cached_with_its_encoder(self, tiny_bert: Path, tmp_path: Path) -> None:
        """tune: on fits on the tuned encoder and records the CV choice; a fresh router loads both
        from the cache without tuning again, and routes with the tuned encoder."""
        config = router_config(tmp_path, tune="on", gate_weight=None)
        first = Router(config, encoder=SentenceEncoder(tiny_bert))
        report = await first.fit(members())
        assert "-tuned-" in first.active_encoder.name and first.encoder.name == tiny_bert.name
        assert report.cv is not None and report.cv["encoder"] == "tuned" and report.cv["folds"] == 2
        assert first.gate_weight == report.cv["gate_weight"] in (0.3, 0.6, 1.0)
        with capture_logs() as logs:
            second = Router(config, encoder=SentenceEncoder(tiny_bert))
            selection = await second.route(Query("hello there"), members())
        events = [e["event"] for e in logs]
        assert "gate.loaded" in events and "encoder.tuned" not in events and "gate.fitted" not in events
        assert second.active_encoder.name == first.active_encoder.name
        assert second.gate_weight == first.gate_weight
        assert selection.experts == ("chat",)

    async def test_auto_cross_validates_base_against_tuned(self, tiny_bert: Path, tmp_path: Path) -> None:
        """tune: auto scores both encoders and every gate kind, and fits what won."""
        router = Router(
            router_config(tmp_path, tune="auto", gate_weight=None), encoder=SentenceEncoder(tiny_bert)
        )
        report = await router.fit(members())
        assert report.cv is not None
        by_encoder = {k.split("/")[0] for k in report.cv["scores"]}
        by_gate = {k.split("/")[1] for k in report.cv["scores"]}
        assert by_encoder == {"base", "tuned"} and by_gate == {"mlp", "knn", "centroid", "ensemble"}
        assert router.gate is not None and router.gate.config.kind == report.cv["gate"]
        assert ("-tuned-" in router.active_encoder.name) == (report.cv["encoder"] == "tuned")

    async def test_off_with_a_fixed_weight_is_todays_gate(self, tiny_bert: Path, tmp_path: Path) -> None:
        """The defaults (tune: off, gate_weight 0.6) tune nothing and cross-validate nothing."""
        router = Router(RouterConfig(gate_cache_dir=str(tmp_path)), encoder=SentenceEncoder(tiny_bert))
        report = await router.fit(members())
        assert report.cv is None and router.active_encoder is router.encoder and router.gate_weight == 0.6
        assert not (tmp_path / "encoders").exists()

    async def test_changed_exemplars_tune_again(self, tiny_bert: Path, tmp_path: Path) -> None:
        """Another exemplar set gets its own tuned encoder."""
        config = router_config(tmp_path, tune="on", gate_weight=0.6)
        a = Router(config, encoder=SentenceEncoder(tiny_bert))
        await a.prepare(members())
        b = Router(config, encoder=SentenceEncoder(tiny_bert), exemplars={"chat": ["nice to meet you"]})
        await b.prepare(members())
        assert a.active_encoder.name != b.active_encoder.name
        assert len(list((tmp_path / "encoders").iterdir())) == 2

    async def test_saved_gate_travels_with_its_tuned_encoder(self, tiny_bert: Path, tmp_path: Path) -> None:
        """save_fitted writes the gate and the tuned folder; find_fitted loads it for the base
        encoder, and a router given that gate embeds with the tuned encoder beside it."""
        config = router_config(tmp_path / "cache", tune="on", gate_weight=0.6)
        router = Router(config, encoder=SentenceEncoder(tiny_bert))
        await router.prepare(members())
        assert router.gate is not None and isinstance(router.active_encoder, SentenceEncoder)
        path = save_fitted(
            router.gate,
            tmp_path / "out",
            encoder=router.active_encoder.name,
            tuned=Path(router.active_encoder.path),
        )
        shutil.rmtree(tmp_path / "cache")
        gate = find_fitted(tmp_path / "out", tiny_bert.name)
        given = Router(RouterConfig(gate_cache_dir=""), encoder=SentenceEncoder(tiny_bert), gate=gate)
        await given.prepare(members())
        assert given.active_encoder.name == router.active_encoder.name
        assert path == tmp_path / "out" / "gate.safetensors"
        with pytest.raises(ConfigError, match="tuned from"):
            find_fitted(tmp_path / "out", "another-encoder")


def _fields(config: TuningConfig) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(config)


YAML = """\
router:
  top_k: 1
  encoder: {encoder}
  gate_cache_dir: {cache}
  tune: on
  gate_weight: null
  gate: {{max_epochs: 20}}
  tuning: {{epochs: {epochs}, batch_size: 64, lr: 0.001, train_layers: 0, max_length: 16}}
  cv: {{folds: 2, temperature_scales: [1.0]}}
  {extra}
backends:
  mock: {{kind: litellm, model: openai/gpt-4o-mini, api_key: sk-test, params: {{mock_response: "ok"}}}}
experts:
  - {{name: coding, kind: coding, backends: [mock]}}
  - {{name: reasoning, kind: reasoning, backends: [mock]}}
  - {{name: epistemic, kind: epistemic, backends: [mock]}}
"""


class TestCli:
    @pytest.mark.slow  # the five built-in experts' exemplars; routing_tuning.py benchmarks the real fit
    @pytest.mark.parametrize("runtime", ["torch", "onnx-fp32"])
    def test_fit_saves_gate_and_tuned_encoder_that_a_config_loads(
        self, tiny_bert: Path, tmp_path: Path, runtime: str
    ) -> None:
        """`fit --out DIR` (router.tune: on from YAML) prints the CV choice and saves the gate with
        its tuned encoder, whichever runtime runs it; a config with `gate_path: DIR` routes with them."""
        from typer.testing import CliRunner

        from moe_agents import load_pipeline
        from moe_agents.cli import app

        config = tmp_path / "fit.yaml"
        run_on = f"encoder_runtime: {runtime}"
        config.write_text(YAML.format(encoder=tiny_bert, cache=tmp_path / "cache", epochs=1, extra=run_on))
        out = tmp_path / "fitted"
        result = CliRunner().invoke(
            app, ["fit", "-c", str(config), "--out", str(out)], env={"COLUMNS": "200"}
        )
        assert result.exit_code == 0, result.output
        assert "chosen: tuned encoder" in result.stdout and "2-fold cross-validation" in result.stdout
        tuned = [p for p in out.iterdir() if p.is_dir()]
        assert (out / "gate.safetensors").exists() and len(tuned) == 1 and "-tuned-" in tuned[0].name
        shutil.rmtree(tmp_path / "cache")
        again = tmp_path / "use.yaml"
        again.write_text(
            YAML.format(
                encoder=tiny_bert, cache=tmp_path / "cache", epochs=1, extra=f"gate_path: {out}\n  {run_on}"
            )
        )
        pipeline = load_pipeline(again)
        selection = await_route(pipeline)
        assert selection.experts and pipeline.router.active_encoder.name == tuned[0].name

    def test_bad_tuning_option_names_its_section(self, tiny_bert: Path, tmp_path: Path) -> None:
        """A tuning setting out of range is a config error that names router.tuning."""
        from moe_agents import load_pipeline

        config = tmp_path / "bad.yaml"
        config.write_text(YAML.format(encoder=tiny_bert, cache=tmp_path, epochs=0, extra=""))
        with pytest.raises(ConfigError, match="tuning"):
            load_pipeline(config)


def await_route(pipeline: object) -> object:
    import anyio

    async def go() -> object:
        return await pipeline.route("hello, how are you?")  # type: ignore[attr-defined]

    return anyio.run(go)
